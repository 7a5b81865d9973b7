/** `flint doctor`: prints the host report. Exit code 0 when flint can run VMs here, 1 otherwise. */
import { runDoctor } from "../doctor/doctor.js";

export function printDoctor(o: { json: boolean; probe: boolean }): number {
  const report = runDoctor({ probe: o.probe });
  if (o.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else {
    for (const c of report.checks) {
      const mark = c.ok ? "ok  " : c.required ? "FAIL" : "warn";
      process.stdout.write(`[${mark}] ${c.name}: ${c.detail}\n`);
    }
    process.stdout.write(`\n${report.verdict}\n`);
  }
  return report.usable ? 0 : 1;
}
