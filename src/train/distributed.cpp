// c10d's Gloo headers compile only with these set (libtorch builds them in itself).
#define USE_C10D_GLOO 1
#include "vitrine/train/distributed.h"

#include "vitrine/core/error.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace vitrine::train {

namespace {

constexpr const char* kPeerAdvice =
    ": a peer process failed or stopped answering (see its log); the run cannot go on "
    "without it. Restart all processes (with --resume to continue from the last state)";

// c10's errors carry a C++ backtrace in what(): keep the message alone.
std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// Gloo's listening devices: the interfaces of GLOO_SOCKET_IFNAME, or this host's address on
// the route to the master. (Gloo's own choice, the master's address, exists only on the
// master's host: every other host fails to listen there.)
std::vector<std::shared_ptr<gloo::transport::Device>> gloo_devices(const std::string& master) {
  std::vector<std::shared_ptr<gloo::transport::Device>> devices;
  const char* names = std::getenv("GLOO_SOCKET_IFNAME");
  if (names != nullptr && *names != '\0') {
    std::stringstream list(names);
    for (std::string name; std::getline(list, name, ',');) {
      if (name.empty()) continue;
      try {
        devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      } catch (const std::exception& e) {
        VT_FAIL("GLOO_SOCKET_IFNAME names the interface '", name, "', which Gloo cannot use "
                "here (`ip addr` lists this host's interfaces) [", message_of(e), "]");
      }
    }
    if (!devices.empty()) return devices;
  }
  const std::string local = local_address_towards(master);
  try {
    devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(local));
  } catch (const std::exception& e) {
    VT_FAIL("Gloo cannot listen on ", local, ", this host's address towards --master-addr ",
            master, "; name the interface to use in GLOO_SOCKET_IFNAME [", message_of(e), "]");
  }
  return devices;
}

template <typename F>
void collective(const char* what, F&& f) {
  try {
    f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    VT_FAIL(what, kPeerAdvice, " [", message_of(e), "]");
  }
}

}  // namespace

std::string local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.c_str(), "9", &hints, &found);
  VT_CHECK(rc == 0 && found != nullptr, "--master-addr ", host, " does not resolve to an "
           "address (", gai_strerror(rc), "): give rank 0's host by a name or address every "
           "host can resolve");
  std::string address, last_error;
  for (const addrinfo* a = found; a != nullptr && address.empty(); a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    sockaddr_storage mine{};
    socklen_t size = sizeof(mine);
    // Connecting a datagram socket sends nothing: the kernel only picks the route.
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &size) == 0) {
      char text[NI_MAXHOST];
      if (getnameinfo(reinterpret_cast<sockaddr*>(&mine), size, text, sizeof(text), nullptr, 0,
                      NI_NUMERICHOST) == 0) {
        address = text;
      }
    } else {
      last_error = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  VT_CHECK(!address.empty(), "no route from this host to --master-addr ", host, " (",
           last_error, "): check the address and this host's network");
  return address;
}

void check_distributed(const DistOptions& o) {
  VT_CHECK(o.world_size >= 1, "--world-size must be at least 1, got ", o.world_size);
  VT_CHECK(o.rank >= 0 && o.rank < o.world_size, "--rank must be in 0..", o.world_size - 1,
           ", got ", o.rank);
  VT_CHECK(o.master_port > 0 && o.master_port < 65536, "--master-port must be a TCP port, got ",
           o.master_port);
  VT_CHECK(o.timeout_s >= 1, "--dist-timeout must be at least 1 second");
  VT_CHECK(!o.master_addr.empty(), "--master-addr: give the address of rank 0's host");
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int rank = 0, size = 1;
};

ProcessGroup::ProcessGroup(const DistOptions& o) : impl_(std::make_unique<Impl>()) {
  check_distributed(o);
  impl_->rank = o.rank;
  impl_->size = o.world_size;
  const std::chrono::milliseconds timeout(static_cast<int64_t>(o.timeout_s) * 1000);
  // Where Gloo listens, first: a bad setting fails at once, not after the rendezvous.
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices = gloo_devices(o.master_addr);
  options->threads = 2;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<size_t>(o.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, o.rank,
                                                               o.world_size, options);
  } catch (const std::exception& e) {
    VT_FAIL("rank ", o.rank, " could not join the ", o.world_size, "-process group at ",
            o.master_addr, ":", o.master_port, " within ", o.timeout_s,
            " s: check that every rank runs with the same --master-addr, --master-port and "
            "--world-size, and that the port is open [", message_of(e), "]");
  }
}

ProcessGroup::~ProcessGroup() = default;

int ProcessGroup::rank() const { return impl_->rank; }
int ProcessGroup::size() const { return impl_->size; }

void ProcessGroup::average(const std::vector<at::Tensor>& tensors) {
  if (tensors.empty()) return;
  // One flat buffer: one collective per step instead of one per tensor.
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : tensors) flat_parts.push_back(t.detach().reshape({-1}).to(at::kFloat));
  std::vector<at::Tensor> buffer{at::cat(flat_parts)};
  collective("averaging gradients", [&] { impl_->group->allreduce(buffer)->wait(); });
  buffer[0].div_(impl_->size);
  int64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    t.detach().copy_(buffer[0].narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

void ProcessGroup::broadcast(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    std::vector<at::Tensor> one{t.detach().contiguous()};
    collective("sharing rank 0's weights", [&] { impl_->group->broadcast(one)->wait(); });
    if (one[0].data_ptr() != t.data_ptr()) t.detach().copy_(one[0]);
  }
}

void ProcessGroup::barrier() {
  collective("waiting for the other processes", [&] { impl_->group->barrier()->wait(); });
}

}  // namespace vitrine::train
