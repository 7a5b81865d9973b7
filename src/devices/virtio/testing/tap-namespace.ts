/**
 * A TAP interface in a private network namespace, for tests that run a
 * virtio-net scenario against a real kernel network stack without touching
 * the host's own network (the scenario runs there through `ip netns exec`).
 */
import { execFileSync, spawnSync } from "node:child_process";

/** Whether this process can make network namespaces: root, with iproute2 installed. */
export const netnsAvailable: boolean = (() => {
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

/**
 * Makes namespace `ns` holding TAP `tap` at `address` (CIDR), up (and its
 * loopback up when `loopbackUp`), runs `body`, then deletes the namespace
 * (and with it the TAP) whatever happened.
 */
export function withTapNamespace<T>(o: { ns: string; tap: string; address: string; loopbackUp?: boolean }, body: () => T): T {
  const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  ip("netns", "add", o.ns);
  try {
    ip("-n", o.ns, "tuntap", "add", "dev", o.tap, "mode", "tap");
    ip("-n", o.ns, "addr", "add", o.address, "dev", o.tap);
    if (o.loopbackUp) ip("-n", o.ns, "link", "set", "lo", "up");
    ip("-n", o.ns, "link", "set", o.tap, "up");
    return body();
  } finally {
    spawnSync("ip", ["netns", "del", o.ns]);
  }
}
