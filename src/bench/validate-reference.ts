/**
 * Runs the reference side of the exit benchmark once and prints what it
 * measured: the C ceiling and QEMU, each for pio and mmio exits.
 *
 *   node dist/bench/validate-reference.js [--count N] [--runs R] [--json]
 *
 * The ceiling is timed between the guest's markers (median of R runs);
 * QEMU by differencing R runs with N exits against R runs with none (see
 * qemu-exits.ts).
 */
import { parseArgs } from "node:util";
import { runCeiling } from "./c-ceiling.js";
import { EXIT_LOOP_MODES } from "../guest/programs/exit-loop.js";
import { runQemuExits } from "./qemu-exits.js";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      count: { type: "string", default: "1000000" },
      runs: { type: "string", default: "3" },
      json: { type: "boolean", default: false },
    },
  });
  const count = Number(values.count);
  const runs = Number(values.runs);
  const rows: Record<string, unknown>[] = [];
  for (const mode of EXIT_LOOP_MODES) {
    const ceiling = await runCeiling({ mode, count, runs });
    rows.push({ runner: "c-ceiling", ...ceiling });
    if (!values.json) console.error(`c-ceiling ${mode}: ${Math.round(ceiling.exitsPerSecond)} exits/s`);
    const qemu = await runQemuExits({ mode, count, runs });
    rows.push({ runner: "qemu", ...qemu });
    if (!values.json) {
      console.error(
        `qemu      ${mode}: ${Math.round(qemu.exitsPerSecond)} exits/s ` +
          `(${qemu.seconds.toFixed(3)} s over baseline), memory overhead ${qemu.memoryOverheadKib} KiB`,
      );
    }
  }
  console.log(JSON.stringify(rows, null, values.json ? 0 : 2));
}

main().catch((error: Error & { code?: string }) => {
  console.error(`validate-reference: ${error.code ? `${error.code}: ` : ""}${error.message}`);
  process.exitCode = 1;
});
