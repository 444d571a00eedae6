// Data-parallel training across processes and hosts with PyTorch's own distributed engine
// (c10d): a TCPStore rendezvous at the master address and a Gloo process group that
// averages gradients. Every process trains a replica on its shard of each batch; the
// averaged gradients keep the replicas identical.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

struct DistOptions {
  int world_size = 1;  ///< processes in the run; 1 = not distributed
  int rank = 0;        ///< this process, 0 .. world_size - 1 (0 saves and logs)
  std::string master_addr = "127.0.0.1";  ///< where rank 0 listens for the rendezvous
  int master_port = 29500;
  int timeout_s = 300;  ///< rendezvous and each collective; a dead peer fails after this
};

/// Throws naming the option when `o` is not a valid setting.
void check_distributed(const DistOptions& o);

/// The address of this host on the route to `host` (a name or an IPv4/IPv6 address): the
/// one Gloo listens on for its peers, 127.0.0.1 when `host` is loopback. No packet is sent.
/// Throws vitrine::Error naming `host` when it does not resolve or no route leads to it.
std::string local_address_towards(const std::string& host);

class ProcessGroup {
 public:
  /// Joins the group: waits for all `world_size` processes at the master (rank 0 hosts the
  /// store). Throws vitrine::Error when they do not all arrive within the timeout. Gloo
  /// listens on the interfaces named in GLOO_SOCKET_IFNAME (comma-separated, as PyTorch
  /// reads it) or else on local_address_towards(master_addr).
  explicit ProcessGroup(const DistOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int size() const;
  /// Replaces each tensor by its mean over the processes (in place; undefined tensors are
  /// taken as zeros of `like`'s shapes by the caller). Throws vitrine::Error when a peer
  /// has failed or stopped answering.
  void average(const std::vector<at::Tensor>& tensors);
  /// Copies rank 0's tensors into every process's (in place).
  void broadcast(const std::vector<at::Tensor>& tensors);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vitrine::train
