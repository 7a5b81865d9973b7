/**
 * ACPI hardware-reduced sleep and reset registers (ACPI 6 §4.8.3.7 "Sleep
 * Control and Status Registers", §4.8.3.6 "Reset Register"), one byte each
 * at ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT and ACPI_RESET_PORT, as
 * the FADT's SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG point.
 *
 *   pio.insert(ACPI_PM_BASE_PORT, ACPI_PM_PORT_COUNT, new AcpiPm(ctx));
 *
 * - Sleep control: SLP_EN with SLP_TYP == ACPI_S5_SLEEP_TYPE powers off.
 *   flint's DSDT declares only \_S5_, so Linux asks for no other state; one a
 *   guest requests anyway is refused by waking at once (WAK_STS set), which
 *   ends ACPICA's wait loop in acpi_hw_extended_sleep().
 * - Sleep status: WAK_STS, write 1 to clear.
 * - Reset: writing ACPI_RESET_VALUE resets the machine (source "acpi").
 */
import type { BusDevice, DeviceContext } from "../bus.js";
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_S5_SLEEP_TYPE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
} from "../../arch/x86_64/layout.js";
import {
  ACPI_X_SLEEP_ENABLE,
  ACPI_X_SLEEP_TYPE_MASK,
  ACPI_X_SLEEP_TYPE_POSITION,
  ACPI_X_WAKE_STATUS,
} from "../../linux/abi.generated.js";

/** First port of the register block and how many ports it spans. */
export const ACPI_PM_BASE_PORT = Math.min(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_RESET_PORT);
export const ACPI_PM_PORT_COUNT =
  Math.max(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_RESET_PORT) - ACPI_PM_BASE_PORT + 1;

const DEVICE = "acpi-pm";
/** Int32 slot of the sleep status register. */
const STATUS = 0;

/**
 * Shared sleep status, so every vCPU's AcpiPm sees one WAK_STS. Optional:
 * without it each instance keeps its own, which is enough because only the
 * vCPU that requested sleep polls the status.
 */
export function createAcpiPmShared(): SharedArrayBuffer {
  return new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
}

/** The sleep control, sleep status and reset registers. */
export class AcpiPm implements BusDevice {
  private readonly s: Int32Array;

  constructor(private readonly ctx: DeviceContext, shared: SharedArrayBuffer = createAcpiPmShared()) {
    this.s = new Int32Array(shared, 0, 1);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (data.length !== 1) return this.fault(`${data.length}-byte read at offset ${offset} ignored`);
    if (ACPI_PM_BASE_PORT + offset === ACPI_SLEEP_STATUS_PORT) data[0] = Atomics.load(this.s, STATUS);
    // Sleep control and reset are write-only and read as 0.
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1) return this.fault(`${data.length}-byte write at offset ${offset} ignored`);
    const value = data[0]!;
    switch (ACPI_PM_BASE_PORT + offset) {
      case ACPI_SLEEP_CONTROL_PORT:
        return this.writeSleepControl(value);
      case ACPI_SLEEP_STATUS_PORT:
        if (value & ACPI_X_WAKE_STATUS) Atomics.and(this.s, STATUS, ~ACPI_X_WAKE_STATUS); // write 1 to clear
        return;
      case ACPI_RESET_PORT:
        if (value === ACPI_RESET_VALUE) this.ctx.requestExit({ kind: "reset", source: "acpi" });
        return;
    }
  }

  private writeSleepControl(value: number): void {
    if (!(value & ACPI_X_SLEEP_ENABLE)) return;
    const sleepType = (value & ACPI_X_SLEEP_TYPE_MASK) >> ACPI_X_SLEEP_TYPE_POSITION;
    if (sleepType === ACPI_S5_SLEEP_TYPE) {
      this.ctx.requestExit({ kind: "poweroff" });
      return;
    }
    this.fault(`sleep type ${sleepType} is not supported: waking at once`);
    Atomics.or(this.s, STATUS, ACPI_X_WAKE_STATUS);
  }

  private fault(message: string): void {
    this.ctx.guestFault(DEVICE, message);
  }
}
