// Data-parallel training through c10d's Gloo backend on loopback: two processes with half
// the batch each must end where one process with the whole batch ends, and a dead peer
// must stop the others with an error instead of a hang.
#include "test_util.h"

#include "vitrine/core/safetensors.h"
#include "vitrine/train/distributed.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace vitrine;
using test::q;
namespace fs = std::filesystem;

namespace {

// Two classes of 16-pixel grey photos: brighter or darker left halves, with noise.
std::string make_run_dir(const std::string& name) {
  const std::string dir = test::temp_dir(name);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> noise(0.f, 0.1f);
  for (int c = 0; c < 2; ++c) {
    const std::string folder = dir + "/data/train/c" + std::to_string(c);
    fs::create_directories(folder);
    for (int i = 0; i < 40; ++i) {
      cv::Mat img(16, 16, CV_8UC1);
      for (int y = 0; y < 16; ++y) {
        for (int x = 0; x < 16; ++x) {
          const float v = 0.5f + noise(rng) + (x < 8 ? (c ? 0.2f : -0.2f) : 0.f);
          img.at<uint8_t>(y, x) = cv::saturate_cast<uint8_t>(255 * std::clamp(v, 0.f, 1.f));
        }
      }
      cv::imwrite(folder + "/" + std::to_string(i) + ".png", img);
    }
  }
  std::ofstream(dir + "/labels.txt") << "c0\nc1\n";
  const auto r = test::run_command(
      q(test::vitrine_bin()) + " init --arch vit_custom --width 32 --depth 2 --heads 4 "
      "--patch-size 8 --image-size 16 --in-channels 1 --labels " + q(dir + "/labels.txt") +
      " --seed 0 --out " + q(dir + "/init"));
  EXPECT_EQ(r.status, 0) << r.err;
  return dir;
}

std::string train_command(const std::string& dir, const std::string& out, int batch) {
  return q(test::vitrine_bin()) + " train --init " + q(dir + "/init") + " --data " +
         q(dir + "/data") + " --out " + q(dir + "/" + out) +
         " --opt sgd --momentum 0.9 --lr 0.05 --scale 1 1 --ratio 1 1 --hflip 0 --seed 0 "
         "--eval-crop-pct 1 --workers 1 --threads 1 --batch-size " + std::to_string(batch);
}

}  // namespace

TEST(Distributed, TwoProcessesEqualOneWithTheDoubledBatch) {
  const std::string dir = make_run_dir("ddp");
  auto r = test::run_command(train_command(dir, "one", 16) + " --epochs 2");
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(train_command(dir, "two", 8) + " --epochs 2 --nproc 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "rank 1 of 2 joined");
  const auto one = safetensors_load(dir + "/one/state/model.safetensors").tensors;
  const auto two = safetensors_load(dir + "/two/state/model.safetensors").tensors;
  const auto init = safetensors_load(dir + "/init/model.safetensors").tensors;
  ASSERT_EQ(one.size(), two.size());
  double worst = 0, moved = 0;
  for (size_t i = 0; i < one.size(); ++i) {
    ASSERT_EQ(one[i].first, two[i].first);
    worst = std::max(worst, test::max_abs_diff(one[i].second, two[i].second));
  }
  for (size_t i = 0; i < init.size(); ++i) {
    moved = std::max(moved, test::max_abs_diff(one[i].second, init[i].second));
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_GT(moved, 1e-2) << "training did not move the weights";
  // Rank 0 alone wrote the run: one metrics log with both epochs, the models, the report.
  std::ifstream log(dir + "/two/metrics.jsonl");
  EXPECT_EQ(std::count(std::istreambuf_iterator<char>(log), {}, '\n'), 2);
  EXPECT_TRUE(fs::exists(dir + "/two/best/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/two/report.html"));
}

TEST(Distributed, ADeadPeerStopsTheOthersWithAnError) {
  const std::string dir = make_run_dir("ddp-dead");
  const int port = 20000 + static_cast<int>(getpid() % 20000);
  const std::string common = train_command(dir, "run", 8) + " --epochs 100000 --world-size 2 "
                             "--master-port " + std::to_string(port) + " --dist-timeout 60";
  const std::string log0 = dir + "/rank0.log", log1 = dir + "/rank1.log";
  auto start = [&](int rank, const std::string& log) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string cmd = "exec " + common + " --rank " + std::to_string(rank) + " 2> " + q(log);
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    return pid;
  };
  const pid_t rank0 = start(0, log0), rank1 = start(1, log1);
  auto text = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Wait until both train (epoch lines come from rank 0), then kill rank 1.
  for (int i = 0; i < 600 && text(log0).find("epoch 2:") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(text(log0).find("epoch 2:"), std::string::npos) << text(log0) << text(log1);
  kill(rank1, SIGKILL);
  waitpid(rank1, nullptr, 0);
  // Rank 0 must stop by itself, well before its 60-s timeout would matter for a hang.
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 900 && done == 0; ++i) {
    done = waitpid(rank0, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (done == 0) {
    kill(rank0, SIGKILL);
    waitpid(rank0, nullptr, 0);
    FAIL() << "rank 0 hung after its peer died:\n" << text(log0);
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_CONTAINS(text(log0), "peer process failed");
}

TEST(Distributed, AMissingPeerFailsTheRendezvousClearly) {
  const std::string dir = make_run_dir("ddp-alone");
  const int port = 20000 + static_cast<int>((getpid() + 7) % 20000);
  const auto r = test::run_command(train_command(dir, "run", 8) + " --epochs 1 --world-size 2 "
                                   "--rank 0 --master-port " + std::to_string(port) +
                                   " --dist-timeout 3");
  EXPECT_NE(r.status, 0);
  EXPECT_CONTAINS(r.err, "could not join the 2-process group");
}

// Gloo listens on this host's own address on the way to the master: on another host than
// the master's, the master's address cannot be listened on.
TEST(Distributed, EachHostListensOnItsOwnAddressTowardsTheMaster) {
  EXPECT_EQ(train::local_address_towards("127.0.0.1"), "127.0.0.1");
  const std::string local = train::local_address_towards("localhost");
  EXPECT_TRUE(local == "127.0.0.1" || local == "::1") << local;
  // This host's network addresses: towards each, the route starts at that address itself.
  ifaddrs* list = nullptr;
  ASSERT_EQ(getifaddrs(&list), 0);
  int checked = 0;
  for (const ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    ASSERT_NE(inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)), nullptr);
    EXPECT_EQ(train::local_address_towards(text), text) << a->ifa_name;
    ++checked;
  }
  freeifaddrs(list);
  EXPECT_GE(checked, 1);
  EXPECT_CONTAINS(test::error_of([] { train::local_address_towards("no-such-host.invalid"); }),
                  "does not resolve");

  // An interface named in GLOO_SOCKET_IFNAME that this host lacks: a clear error at once,
  // before the rendezvous waits for peers.
  const std::string dir = make_run_dir("ddp-ifname");
  const int port = 20000 + static_cast<int>((getpid() + 11) % 20000);
  const auto r = test::run_command("GLOO_SOCKET_IFNAME=vt-none " + train_command(dir, "run", 8) +
                                   " --epochs 1 --world-size 2 --rank 0 --master-port " +
                                   std::to_string(port) + " --dist-timeout 60");
  EXPECT_NE(r.status, 0);
  EXPECT_CONTAINS(r.err, "GLOO_SOCKET_IFNAME names the interface 'vt-none'");
  EXPECT_EQ(r.err.find("frame #"), std::string::npos) << "no C++ backtrace: " << r.err;
  fs::remove_all(dir);
}
