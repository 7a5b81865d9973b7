/**
 * VMGenID: the Virtual Machine Generation ID (Microsoft's "Virtual Machine
 * Generation ID" paper; Linux drivers/virt/vmgenid.c), how a restored or
 * cloned guest learns that it is one, so that it can reseed its RNG instead
 * of handing out the same "random" bytes as every other clone.
 *
 * It is 16 bytes of guest memory at VMGENID_ADDR (arch/x86_64/layout.ts),
 * announced by the DSDT device VGEN (_HID "VMGENCTR", ADDR giving the
 * address), and the Generic Event Device GED0 whose interrupt, GED_GSI,
 * makes the guest's ACPI run _EVT, which notifies VGEN (arch/x86_64/acpi/dsdt.ts).
 * flint fills the id with random bytes at boot (Linux mixes it in with
 * add_device_randomness at probe) and on every restore writes a new one and
 * raises the GED interrupt before any vCPU runs; Linux's notify handler then
 * reads the new id and, when it differs from the old, calls
 * add_vmfork_randomness, which reseeds the CRNG.
 *
 * Threat model: the id is the guest's own memory; the guest may overwrite it,
 * which only fools itself. flint never reads it back, and writes only inside
 * guest memory (the address is checked against it).
 *
 * The binding is ACPI only: a kernel without ACPI (Linux 6.1 has no
 * devicetree or command-line binding for VMGenID on x86) is never told.
 */
import { randomBytes } from "node:crypto";
import { gedDeviceAml, vmGenIdDeviceAml } from "../../arch/x86_64/acpi/dsdt.js";
import type { Aml } from "../../arch/x86_64/acpi/aml.js";
import { GED_GSI, VMGENID_ADDR, VMGENID_SIZE } from "../../arch/x86_64/layout.js";
import type { GuestMemory } from "../../memory/guest-memory.js";

/** Largest GSI of the in-kernel IOAPIC (pins 0..23). */
const MAX_IOAPIC_GSI = 23;

/** Why a VMGenID could not be placed, written or restored; `code` is stable. */
export class VmGenIdError extends Error {
  /** EBADSTATE: a saved record of another kind, version or shape. ERANGE: the id would not lie inside guest memory. */
  readonly code: "EBADSTATE" | "ERANGE";
  constructor(code: VmGenIdError["code"], message: string) {
    super(message);
    this.name = "VmGenIdError";
    this.code = code;
  }
}

/** Saved VMGenID: where the guest was told the id is and which GSI notifies it. */
export interface VmGenIdSavedState {
  kind: "vmgenid";
  version: 1;
  /** Guest-physical address of the 16-byte id. */
  guestAddress: number;
  /** The Generic Event Device's GSI. */
  gsi: number;
}

/** Something that drives an interrupt line (DeviceContext.setIrqLine). */
export interface IrqLine {
  setIrqLine(gsi: number, level: 0 | 1): void;
}

/** One VM's generation id. */
export class VmGenId {
  /** The id last written (all zero before the first write). */
  private current: Uint8Array = new Uint8Array(VMGENID_SIZE);

  constructor(readonly guestAddress: number = VMGENID_ADDR, readonly gsi: number = GED_GSI) {
    if (!Number.isSafeInteger(guestAddress) || guestAddress < 0) {
      throw new VmGenIdError("ERANGE", `Cannot place VMGenID at ${guestAddress}: not a guest-physical address`);
    }
    if (!Number.isInteger(gsi) || gsi < 0 || gsi > MAX_IOAPIC_GSI) {
      throw new VmGenIdError("ERANGE", `Cannot give VMGenID GSI ${gsi}: the IOAPIC has GSIs 0 to ${MAX_IOAPIC_GSI}`);
    }
  }

  /** A VMGenID at the place a saved record says; throws VmGenIdError EBADSTATE for anything else. */
  static fromSaved(saved: unknown): VmGenId {
    const s = saved as Partial<VmGenIdSavedState> | null;
    if (s === null || typeof s !== "object" || s.kind !== "vmgenid" || s.version !== 1) {
      throw new VmGenIdError("EBADSTATE", `Cannot restore VMGenID: unknown state ${String(s?.kind)} v${String(s?.version)}`);
    }
    // Checked here: an absent field would take the constructor's default instead of being refused.
    if (typeof s.guestAddress !== "number" || typeof s.gsi !== "number") {
      throw new VmGenIdError("EBADSTATE", "Cannot restore VMGenID: its record has no guestAddress or gsi");
    }
    try {
      return new VmGenId(s.guestAddress, s.gsi);
    } catch (e) {
      throw new VmGenIdError("EBADSTATE", `Cannot restore VMGenID: ${(e as Error).message}`);
    }
  }

  save(): VmGenIdSavedState {
    return { kind: "vmgenid", version: 1, guestAddress: this.guestAddress, gsi: this.gsi };
  }

  /** The DSDT objects for \_SB_: the VMGenID device and the Generic Event Device that notifies it. */
  dsdtDevices(): Aml[] {
    return [vmGenIdDeviceAml(this.guestAddress), gedDeviceAml(this.gsi)];
  }

  /**
   * Writes a new random id into guest memory and returns it (a copy).
   * `random` is for tests. Throws VmGenIdError ERANGE when the 16 bytes are
   * not all guest memory.
   */
  writeNewId(mem: GuestMemory, random: (bytes: number) => Uint8Array = randomBytes): Uint8Array {
    if (!mem.contains(this.guestAddress, VMGENID_SIZE)) {
      throw new VmGenIdError("ERANGE", `Cannot write the VMGenID: [0x${this.guestAddress.toString(16)}, +${VMGENID_SIZE}) is not guest memory`);
    }
    const id = Uint8Array.from(random(VMGENID_SIZE).subarray(0, VMGENID_SIZE));
    if (id.length !== VMGENID_SIZE) throw new VmGenIdError("ERANGE", `Cannot write the VMGenID: the source gave ${id.length} bytes, not ${VMGENID_SIZE}`);
    mem.write(this.guestAddress, id);
    this.current = id;
    return Uint8Array.from(id);
  }

  /** The id last written by writeNewId (a copy). */
  get id(): Uint8Array {
    return Uint8Array.from(this.current);
  }

  /**
   * Tells the guest the id changed: an edge on the GED's GSI (the DSDT
   * declares it edge-triggered, active-high), so its _EVT notifies VGEN.
   */
  notify(irq: IrqLine): void {
    irq.setIrqLine(this.gsi, 1);
    irq.setIrqLine(this.gsi, 0);
  }
}
