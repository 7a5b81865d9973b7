import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
} from "../../arch/x86_64/layout.js";
import {
  ACPI_X_SLEEP_ENABLE, ACPI_X_SLEEP_TYPE_MASK, ACPI_X_SLEEP_TYPE_POSITION, ACPI_X_WAKE_STATUS,
} from "../../linux/abi.generated.js";
import { Bus } from "../bus.js";
import { AcpiPm, ACPI_PM_BASE_PORT, ACPI_PM_PORT_COUNT, createAcpiPmShared } from "./acpi-pm.js";
import { FakeContext } from "../testing/fake-context.js";

/** SLP_TYP | SLP_EN as ACPICA's acpi_hw_extended_sleep() composes it. */
const sleepControl = (type: number, enable = true): number =>
  ((type << ACPI_X_SLEEP_TYPE_POSITION) & ACPI_X_SLEEP_TYPE_MASK) | (enable ? ACPI_X_SLEEP_ENABLE : 0);

function setup(shared?: SharedArrayBuffer) {
  const ctx = new FakeContext();
  const pio = new Bus();
  pio.insert(ACPI_PM_BASE_PORT, ACPI_PM_PORT_COUNT, new AcpiPm(ctx, shared));
  const outb = (port: number, v: number): void => void pio.write(port, Uint8Array.of(v));
  const inb = (port: number): number => {
    const b = new Uint8Array(1);
    assert.ok(pio.read(port, b));
    return b[0]!;
  };
  return { ctx, outb, inb };
}

describe("ACPI sleep and reset registers", () => {
  it("powers off when the guest enters S5 the way ACPICA does", () => {
    const { ctx, outb } = setup();
    outb(ACPI_SLEEP_STATUS_PORT, ACPI_X_WAKE_STATUS);
    outb(ACPI_SLEEP_CONTROL_PORT, sleepControl(ACPI_S5_SLEEP_TYPE));
    assert.deepEqual(ctx.exits, [{ kind: "poweroff" }]);
  });

  it("does not power off for S5 without SLP_EN, nor for another sleep type", () => {
    const { ctx, outb } = setup();
    outb(ACPI_SLEEP_CONTROL_PORT, sleepControl(ACPI_S5_SLEEP_TYPE, false));
    outb(ACPI_SLEEP_CONTROL_PORT, sleepControl(ACPI_S5_SLEEP_TYPE - 2));
    assert.deepEqual(ctx.exits, []);
  });

  it("wakes at once from an unsupported sleep type, so ACPICA's WAK_STS wait ends; WAK_STS is write-1-to-clear", () => {
    const { ctx, outb, inb } = setup();
    assert.equal(inb(ACPI_SLEEP_STATUS_PORT) & ACPI_X_WAKE_STATUS, 0);
    outb(ACPI_SLEEP_CONTROL_PORT, sleepControl(3));
    assert.ok(inb(ACPI_SLEEP_STATUS_PORT) & ACPI_X_WAKE_STATUS);
    outb(ACPI_SLEEP_STATUS_PORT, 0);
    assert.ok(inb(ACPI_SLEEP_STATUS_PORT) & ACPI_X_WAKE_STATUS, "writing 0 leaves it");
    outb(ACPI_SLEEP_STATUS_PORT, ACPI_X_WAKE_STATUS);
    assert.equal(inb(ACPI_SLEEP_STATUS_PORT) & ACPI_X_WAKE_STATUS, 0);
    assert.equal(ctx.faults.length, 1);
  });

  it("shares WAK_STS between vCPUs given the same buffer", () => {
    const shared = createAcpiPmShared();
    const a = setup(shared);
    const b = setup(shared);
    a.outb(ACPI_SLEEP_CONTROL_PORT, sleepControl(1));
    assert.ok(b.inb(ACPI_SLEEP_STATUS_PORT) & ACPI_X_WAKE_STATUS);
  });

  it("resets on ACPI_RESET_VALUE and ignores other values", () => {
    const { ctx, outb } = setup();
    outb(ACPI_RESET_PORT, ACPI_RESET_VALUE ^ 0xff);
    assert.deepEqual(ctx.exits, []);
    outb(ACPI_RESET_PORT, ACPI_RESET_VALUE);
    assert.deepEqual(ctx.exits, [{ kind: "reset", source: "acpi" }]);
  });

  it("never throws on random accesses of any size", () => {
    const ctx = new FakeContext();
    const pm = new AcpiPm(ctx);
    let seed = 7;
    const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 50_000; i++) {
      const data = new Uint8Array([1, 2, 4, 8][rand(4)]!).map(() => rand(256));
      if (rand(2)) pm.read(rand(ACPI_PM_PORT_COUNT + 2), data);
      else pm.write(rand(ACPI_PM_PORT_COUNT + 2), data);
    }
    assert.ok(ctx.exits.every((e) => e.kind === "poweroff" || (e.kind === "reset" && e.source === "acpi")));
  });
});
