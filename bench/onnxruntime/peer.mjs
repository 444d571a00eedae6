// ONNX Runtime (CPU) as a peer for bench/inference.py: times one ONNX model on random
// input, as bench/inference.cpp times Vitrine.
//   node peer.mjs MODEL.onnx BATCH ITERS THREADS
// Prints one JSON line: {"img_per_s", "ms", "version"}. The model's input is float32
// BATCH x 3 x 224 x 224 (the export fixes the batch size).
import ort from 'onnxruntime-node';

const [model, batch, iters, threads] = process.argv.slice(2);
if (!model || !(batch > 0) || !(iters > 0) || !(threads > 0)) {
  console.error('usage: node peer.mjs MODEL.onnx BATCH ITERS THREADS');
  process.exit(2);
}
const n = Number(batch);
const session = await ort.InferenceSession.create(model, {
  intraOpNumThreads: Number(threads),
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
});
const data = new Float32Array(n * 3 * 224 * 224);
for (let i = 0; i < data.length; ++i) data[i] = Math.random() * 2 - 1;
const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, [n, 3, 224, 224]) };
await session.run(feeds);  // warm-up
const start = performance.now();
for (let i = 0; i < Number(iters); ++i) await session.run(feeds);
const ms = (performance.now() - start) / Number(iters);
console.log(JSON.stringify({ img_per_s: (1000 * n) / ms, ms, version: ort.env.versions.common }));
