/**
 * The AML body of flint's DSDT (Differentiated System Description Table,
 * ACPI 6.x §5.2.11.1) and the device objects in it:
 *
 *   Scope (\_SB_) {
 *     Device (COM1) { _HID PNP0501, _UID 0, _CRS: IO 0x3f8/8, IRQ 4 }
 *     Device (PS2K) { _HID PNP0303, _CRS: IO 0x60/1, IO 0x64/1, IRQ 1 }
 *     ...extra devices (e.g. virtio-mmio "LNRO0005" devices, VGEN and GED0
 *        from vmGenIdDeviceAml and gedDeviceAml)
 *   }
 *   Name (\_S5_, Package () { ACPI_S5_SLEEP_TYPE, 0, 0, 0 })
 *
 * \_S5_ is what makes Linux register ACPI power-off: on a hardware-reduced
 * platform acpi_hw_extended_sleep() then writes
 * (SLP_TYP << ACPI_X_SLEEP_TYPE_POSITION) | ACPI_X_SLEEP_ENABLE to the FADT
 * SLEEP_CONTROL_REG (ACPI 6.x §4.8.3.7, §7.4.2.5).
 */
import { ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KBD_IRQ } from "../layout.js";
import {
  amlArg, amlConcat, amlDevice, amlEisaId, amlIf, amlInteger, amlLEqual, amlMethod, amlName, amlNotify, amlPackage,
  amlReturn, amlScope, amlString, extendedInterruptResource, ioResource, irqNoFlagsResource, memory32FixedResource,
  resourceTemplate, type Aml,
} from "./aml.js";

/** Bytes of I/O space a 16550 UART decodes. */
const UART_IO_BYTES = 8;

/** The COM1 serial port device (PNP0501, 16550A-compatible) at COM1_PORT, IRQ COM1_IRQ. */
export function com1DeviceAml(): Aml {
  return amlDevice("COM1", [
    amlName("_HID", amlEisaId("PNP0501")),
    amlName("_UID", amlInteger(0)),
    amlName("_CRS", resourceTemplate([
      ioResource({ min: COM1_PORT, max: COM1_PORT, alignment: 1, length: UART_IO_BYTES }),
      irqNoFlagsResource([COM1_IRQ]),
    ])),
  ]);
}

/**
 * The i8042 keyboard controller (PNP0303: IBM Enhanced keyboard, 101/102-key,
 * PS/2 mouse support) at its data and command ports, with the keyboard's IRQ.
 * On a hardware-reduced ACPI platform Linux has no legacy PIC and creates an
 * ISA IRQ only when a device's _CRS names it (acpi_register_gsi): without this
 * object drivers/input/serio/i8042.c probes the ports directly, its
 * request_irq(1) fails and the probe ends with -EINVAL, so no keyboard. No
 * mouse (PNP0F13) object: Linux then leaves the AUX port alone.
 */
export function i8042DeviceAml(): Aml {
  return amlDevice("PS2K", [
    amlName("_HID", amlEisaId("PNP0303")),
    amlName("_CRS", resourceTemplate([
      ioResource({ min: I8042_DATA_PORT, max: I8042_DATA_PORT, alignment: 1, length: 1 }),
      ioResource({ min: I8042_COMMAND_PORT, max: I8042_COMMAND_PORT, alignment: 1, length: 1 }),
      irqNoFlagsResource([I8042_KBD_IRQ]),
    ])),
  ]);
}

/** A memory-mapped device described to the guest through ACPI. */
export interface MmioDeviceDescription {
  /** The device object's NameSeg, unique in \_SB_, e.g. "V000". */
  name: string;
  /** _HID string, e.g. "LNRO0005" for virtio-mmio (Linux drivers/virtio/virtio_mmio.c). */
  hid: string;
  /** _UID: distinguishes devices with the same _HID. */
  uid: number;
  /** Guest-physical base and size of the register window. */
  base: number;
  sizeBytes: number;
  /** The GSI the device raises (edge-triggered, active-high, exclusive). */
  gsi: number;
}

/**
 * A Device object for an MMIO device with one register window and one
 * interrupt, for `buildAcpiTables({ extraDsdtDevices })`:
 *
 *   Device (V000) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CCA, One)
 *     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, base, size)
 *                                       Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } }) }
 *
 * _CCA One declares DMA cache-coherent (ACPI 6.x §6.2.17), which it is on x86.
 */
export function mmioDeviceAml(d: MmioDeviceDescription): Aml {
  return amlDevice(d.name, [
    amlName("_HID", amlString(d.hid)),
    amlName("_UID", amlInteger(d.uid)),
    amlName("_CCA", amlInteger(1)),
    amlName("_CRS", resourceTemplate([
      memory32FixedResource({ base: d.base, length: d.sizeBytes, writable: true }),
      extendedInterruptResource([d.gsi], { edge: true, activeLow: false, shared: false }),
    ])),
  ]);
}

/** _HID and _CID Linux's VMGenID driver binds to (drivers/virt/vmgenid.c vmgenid_ids). */
export const VMGENID_HID = "VMGENCTR";
export const VMGENID_CID = "VM_GEN_COUNTER";
/** The VMGenID device's path, which the GED's _EVT notifies. */
export const VMGENID_DEVICE_PATH = "\\_SB_.VGEN";
/** Notify value for "the generation id changed" (Microsoft's VMGenID spec; any 0x80+ is device-specific, ACPI 6.x §5.6.6). */
export const VMGENID_NOTIFY_VALUE = 0x80;
/** _HID of the Generic Event Device (ACPI 6.x §5.6.9). */
export const GED_HID = "ACPI0013";

/**
 * The VMGenID device (Microsoft's "Virtual Machine Generation ID" paper; Linux
 * drivers/virt/vmgenid.c): the driver evaluates ADDR, a package of the low and
 * high 32 bits of the guest-physical address of the 16-byte id, reads the id
 * and, on Notify 0x80, reads it again and reseeds the RNG if it changed.
 *
 *   Device (VGEN) { Name (_HID, "VMGENCTR") Name (_CID, "VM_GEN_COUNTER") Name (_DDN, "VM_GEN_COUNTER")
 *     Method (ADDR, 0, NotSerialized) { Return (Package () { low, high }) } }
 */
export function vmGenIdDeviceAml(address: number): Aml {
  return amlDevice("VGEN", [
    amlName("_HID", amlString(VMGENID_HID)),
    amlName("_CID", amlString(VMGENID_CID)),
    amlName("_DDN", amlString(VMGENID_CID)),
    amlMethod("ADDR", 0, false, [amlReturn(amlPackage([amlInteger(address % 2 ** 32), amlInteger(Math.floor(address / 2 ** 32))]))]),
  ]);
}

/**
 * The Generic Event Device (ACPI 6.x §5.6.9), how a hardware-reduced
 * platform, without GPEs or an SCI, signals events: it owns one interrupt;
 * when it fires, Linux (drivers/acpi/evged.c) runs _EVT with the GSI as Arg0,
 * which here notifies the VMGenID device.
 *
 *   Device (GED0) { Name (_HID, "ACPI0013") Name (_UID, 0)
 *     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } })
 *     Method (_EVT, 1, Serialized) { If (LEqual (Arg0, gsi)) { Notify (\_SB_.VGEN, 0x80) } } }
 */
export function gedDeviceAml(gsi: number): Aml {
  return amlDevice("GED0", [
    amlName("_HID", amlString(GED_HID)),
    amlName("_UID", amlInteger(0)),
    amlName("_CRS", resourceTemplate([extendedInterruptResource([gsi], { edge: true, activeLow: false, shared: false })])),
    amlMethod("_EVT", 1, true, [
      amlIf(amlLEqual(amlArg(0), amlInteger(gsi)), [amlNotify(VMGENID_DEVICE_PATH, VMGENID_NOTIFY_VALUE)]),
    ]),
  ]);
}

/** The DSDT's AML: \_SB_ with COM1, the i8042 and `extraDevices`, and \_S5_. */
export function dsdtAml(extraDevices: readonly Aml[] = []): Aml {
  return amlConcat([
    amlScope("\\_SB_", [com1DeviceAml(), i8042DeviceAml(), ...extraDevices]),
    amlName("\\_S5_", amlPackage([amlInteger(ACPI_S5_SLEEP_TYPE), amlInteger(0), amlInteger(0), amlInteger(0)])),
  ]);
}
