/**
 * The serial-flood guest (guest/ring3/serial-flood.S): a PVH kernel that
 * writes the alphabet to COM1 from ring 3 forever. Boot it with
 * `flint run --kernel <path> --boot pvh --no-acpi`; only stopping the VM
 * ends it. A test fixture: the CLI's stalled-console test
 * (src/cli/stop.test.ts) runs it, and the snapshot benchmark restores it
 * in flint and QEMU (src/bench/snapshot-process.ts: its first byte after a
 * restore is the guest running again).
 */
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { COM1_PORT } from "../../../arch/x86_64/layout.js";
import { cachedArtifact, gcc, packagePath, readSources } from "../build-cache.js";
import { cHeader, flintAbiHeader } from "../c-header.js";

/** Where the PVH image is linked and loaded (guest-physical), as the exit-loop guest. */
export const SERIAL_FLOOD_LOAD_ADDR = 0x10_0000;

const SOURCES = ["guest/ring3/serial-flood.S", "guest/ring3/serial-flood.ld", "guest/ring3/pvh-ring3.h"] as const;
/** Bump when the build steps change in a way that changes the output. */
const RECIPE_VERSION = "serial-flood-guest 2";

function protocolHeader(): string {
  return cHeader("the serial-flood guest (src/guest/programs/testing/serial-flood.ts)", {
    SERIAL_FLOOD_PORT: COM1_PORT,
    SERIAL_FLOOD_LOAD_ADDR,
  });
}

function gccArgs(dir: string): string[] {
  return [
    "-nostdlib", "-static", "-no-pie",
    "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
    `-Wl,-T,${packagePath(SOURCES[1])}`,
    `-Wl,--defsym=SERIAL_FLOOD_LOAD_ADDR=${SERIAL_FLOOD_LOAD_ADDR}`,
    `-I${dir}`, `-I${packagePath("guest/ring3")}`,
    packagePath(SOURCES[0]),
    "-o", join(dir, "serial-flood.elf"),
  ];
}

/** Returns the path of the serial-flood guest ELF, building it with gcc unless cached. */
export function buildSerialFloodGuest(): string {
  return cachedArtifact({
    name: "serial-flood-guest",
    keyParts: [RECIPE_VERSION, ...readSources(SOURCES), flintAbiHeader(), protocolHeader(), ...gccArgs("DIR")],
    fileName: "serial-flood.elf",
    build(dir) {
      writeFileSync(join(dir, "flint-abi.h"), flintAbiHeader());
      writeFileSync(join(dir, "serial-flood-protocol.h"), protocolHeader());
      gcc(gccArgs(dir), "the serial-flood guest");
    },
  });
}
