import assert from "node:assert/strict";
import { test } from "node:test";
import { earlyThreadsFor } from "./early-threads.js";

test("flint run's threads are read from its raw arguments: --cpus (both forms), and one device thread for any virtio device flag", () => {
  assert.deepEqual(earlyThreadsFor(["run", "--kernel", "k"]), { vcpuThreads: 1, deviceThreads: 0 });
  assert.deepEqual(earlyThreadsFor(["run", "--kernel", "k", "--cpus", "2"]), { vcpuThreads: 2, deviceThreads: 0 });
  assert.deepEqual(earlyThreadsFor(["run", "--cpus=3", "--rng"]), { vcpuThreads: 3, deviceThreads: 1 });
  assert.deepEqual(earlyThreadsFor(["run", "--disk", "a.img,thread=own", "--net=tap=t0,mac=06:00:00:00:00:01"]), { vcpuThreads: 1, deviceThreads: 1 });
  assert.deepEqual(earlyThreadsFor(["run", "--balloon", "0", "--cpus", "4", "--cpus", "2"]), { vcpuThreads: 2, deviceThreads: 1 }, "the last --cpus wins, as commander's");
});

test("Firecracker's mode (--api-sock, --config-file, or started as firecracker) starts the one vCPU thread the API warms", () => {
  const one = { vcpuThreads: 1, deviceThreads: 0 };
  assert.deepEqual(earlyThreadsFor(["--api-sock", "/tmp/fc.sock"]), one);
  assert.deepEqual(earlyThreadsFor(["--api-sock=/tmp/fc.sock", "--id", "a"]), one);
  assert.deepEqual(earlyThreadsFor(["--no-api", "--config-file", "vm.json"]), one);
  assert.deepEqual(earlyThreadsFor([], "firecracker"), one, "bare firecracker serves the API");
  assert.deepEqual(earlyThreadsFor(["--id", "x"], "firecracker-v1.7"), one);
  assert.deepEqual(earlyThreadsFor(["--version"], "firecracker"), { vcpuThreads: 0, deviceThreads: 0 });
  assert.deepEqual(earlyThreadsFor(["--describe-snapshot", "s"], "firecracker"), { vcpuThreads: 0, deviceThreads: 0 });
  assert.deepEqual(earlyThreadsFor(["--id", "a", "--exec-file", "f", "--", "--api-sock", "s"], "jailer"), { vcpuThreads: 0, deviceThreads: 0 }, "the jailer starts its monitor in another process");
  assert.deepEqual(earlyThreadsFor(["jail", "--id", "a", "--", "--api-sock", "s"]), { vcpuThreads: 0, deviceThreads: 0 });
});

test("anything but a plain run starts nothing, and a count the CLI will refuse starts no vCPU thread", () => {
  for (const args of [[], ["--version"], ["jail", "--cpus", "2"], ["run", "--help", "--cpus", "2"], ["run", "-h"], ["run", "--cpus", "65"]]) {
    assert.deepEqual(earlyThreadsFor(args), { vcpuThreads: 0, deviceThreads: 0 }, args.join(" "));
  }
  for (const bad of ["0", "-1", "two", "1.5", ""]) assert.equal(earlyThreadsFor(["run", "--cpus", bad]).vcpuThreads, 0, `--cpus '${bad}'`);
  assert.equal(earlyThreadsFor(["run", "--cpus"]).vcpuThreads, 1, "a missing value: commander says so; the default is guessed");
});
