/**
 * Run by net.loop.test.ts inside a private network namespace (`ip netns exec
 * NS node net-loop-scenario.js TAP`), where TAP exists and is up: virtio-net
 * over the real TAP in its real device thread (device-loop-rig.ts), against
 * a hostile driver on both queues (receive buffers mostly never posted,
 * mergeable receive buffers negotiated) while
 * a second guest thread keeps re-adding well-formed TX frames. Prints the
 * report (JSON) on stdout; exits 1 with the reason on stderr when a bound or
 * an answer failed. A TAP can only be attached from its own namespace, hence
 * a separate process.
 */
import { ETH_P_IP, VIRTIO_NET_F_MRG_RXBUF } from "../../../linux/abi.generated.js";
import { NET_RX_QUEUE, NET_TX_QUEUE } from "../net.js";
import { concat, ethFrame, netHeader } from "./net-test-rig.js";
import { DeviceLoopRig, VIRTIO_V1, actionCount, arbLoopAction } from "./device-loop-rig.js";
import { LOOP_PROPERTY_BOUNDS, formatReport, runLoopProperty } from "./device-loop-property.js";

const tap = process.argv[2] ?? "ftap0";
const LIMIT_MS = 10_000;
const MAC = "52:54:00:12:34:56";
const macBytes = Uint8Array.from(MAC.split(":").map((h) => parseInt(h, 16)));
/** A well-formed TX packet: a virtio-net header and a 60-byte Ethernet frame to the broadcast address. */
const packet = concat(netHeader(), ethFrame(new Uint8Array(6).fill(0xff), macBytes, ETH_P_IP, new Uint8Array(46)));

const rig = await DeviceLoopRig.start({ backendModule: new URL("../net.js", import.meta.url), backendOptions: { tap, mac: MAC }, name: "virtio-net", memoryBytes: 16 << 20 });
try {
  const drivers = [rig.newDriver(NET_RX_QUEUE, { queueSize: 64 }), rig.newDriver(NET_TX_QUEUE, { queueSize: 64 })];
  // Mergeable receive buffers on (as Linux negotiates them): the hostile RX chains meet the
  // multi-chain path, whose held chains must stay within the ring (net.property.test.ts covers RX without it).
  rig.bringUp({ features: VIRTIO_V1 | (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF)), drivers });
  const report = await runLoopProperty({
    rig, label: "virtio-net", actions: actionCount(), seed: 31337,
    arb: arbLoopAction(rig.mem, { queues: 2, maxQueueSize: 64, configBytes: 12 }),
    bounds: LOOP_PROPERTY_BOUNDS,
    control: { op: "info" }, progress: (l) => process.stderr.write(`${l}\n`),
    flood: {
      queue: NET_TX_QUEUE, heads: (drv) => {
        const at = drv.heapStart;
        rig.mem.write(at, packet);
        for (let i = 0; i < 8; i++) drv.writeDescriptor(i, { addr: at, len: packet.length, flags: 0, next: 0 });
        return [0, 1, 2, 3, 4, 5, 6, 7];
      },
    },
    wellFormed: async () => {
      const [, tx] = rig.bringUpAgain();
      await rig.untilReset(undefined, LIMIT_MS);
      tx!.addChain({ readable: [packet] });
      rig.kick(NET_TX_QUEUE);
      await rig.until(() => tx!.usedIdx === 1, "a well-formed TX frame is sent", LIMIT_MS);
    },
  });
  process.stdout.write(`${JSON.stringify({ line: formatReport("virtio-net", report), actions: report.actions, guestFaults: report.guestFaults })}\n`);
} catch (e) {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
} finally {
  await rig.stop();
}
