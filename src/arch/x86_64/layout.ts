/**
 * The guest-physical address map of a flint x86-64 microVM. Every fixed guest
 * address flint uses is named here, once, with the reason it is where it is.
 *
 *   0x0000_0000  real-mode IVT/BDA (left zero)
 *   0x0000_0500  GDT used at entry (BOOT_GDT_START)
 *   0x0000_0520  IDT placeholder (BOOT_IDT_START)
 *   0x0000_6000  PVH hvm_start_info, then its memory map
 *   0x0000_7000  Linux zero page, struct boot_params (ZERO_PAGE_START)
 *   0x0000_8ff0  initial stack pointer (BOOT_STACK_POINTER)
 *   0x0000_9000  identity page tables: PML4, PDPTE, PDEs (PML4_START...)
 *   0x0002_0000  kernel command line (CMDLINE_START, up to CMDLINE_MAX_SIZE)
 *   0x0009_fc00  EBDA: MP floating pointer + MP config table (MPTABLE_START)
 *   0x000d_fff0  VMGenID: the 16-byte VM generation id (VMGENID_ADDR)
 *   0x000e_0000  ACPI tables, RSDP first (ACPI_START; scanned range per ACPI spec)
 *   0x0010_0000  kernel load address for bzImage (HIMEM_START)
 *   ...          RAM
 *   0xc000_0000  start of the 32-bit MMIO gap (MMIO_GAP_START)
 *   0xd000_0000  boot-timer MMIO byte (BOOT_TIMER_ADDR)
 *   0xd000_1000  virtio-mmio devices, one page each (VIRTIO_MMIO_BASE)
 *   0xd010_0000  the same devices' command-line windows (VIRTIO_MMIO_CMDLINE_BASE)
 *   0xfec0_0000  IOAPIC (in-kernel irqchip)
 *   0xfee0_0000  local APICs
 *   0x1_0000_0000 RAM above 4 GiB when memory does not fit below the gap
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** GDT loaded before entering the kernel: null, code64, data, TSS placeholder. */
export const BOOT_GDT_START = 0x500;
/** An empty IDT: the kernel installs its own before enabling interrupts. */
export const BOOT_IDT_START = 0x520;
/** PVH: struct hvm_start_info (xen/interface/hvm/start_info.h). */
export const PVH_INFO_START = 0x6000;
/** PVH: the hvm_memmap_table_entry array follows the start info. */
export const PVH_MEMMAP_START = 0x6040;
/** Linux boot protocol zero page (struct boot_params). */
export const ZERO_PAGE_START = 0x7000;
/** Initial RSP: below the page tables, 16-byte aligned. */
export const BOOT_STACK_POINTER = 0x8ff0;
/** Identity page tables used for the 64-bit entry: PML4, one PDPT, PD pages. */
export const PML4_START = 0x9000;
export const PDPTE_START = 0xa000;
export const PDE_START = 0xb000;
/** Kernel command line. */
export const CMDLINE_START = 0x20000;
/** Largest command line flint accepts (the boot protocol's cmdline_size caps it further). */
export const CMDLINE_MAX_SIZE = 0x10000;
/** Extended BIOS data area: the MP table lives here so Linux's EBDA scan finds it. */
export const EBDA_START = 0x9fc00;
export const MPTABLE_START = EBDA_START;
/**
 * VMGenID (devices/acpi/vmgenid.ts): the 16-byte VM generation id the guest's
 * driver reads through the DSDT's VGEN.ADDR. In the e820-reserved legacy
 * area [EBDA_START, HIMEM_START), right below the ACPI tables, so Linux never
 * allocates it and maps it with memremap (drivers/virt/vmgenid.c); not on a
 * 2 KiB boundary, where Linux's probe_roms() looks for option-ROM signatures.
 */
export const VMGENID_ADDR = 0xd_fff0;
/** Bytes of the generation id (drivers/virt/vmgenid.c VMGENID_SIZE). */
export const VMGENID_SIZE = 16;
/** ACPI tables; the RSDP must be 16-byte aligned in 0xE0000–0xFFFFF to be found by a scan. */
export const ACPI_START = 0xe0000;
export const ACPI_END = 0x100000;
/** First byte above the legacy hole; bzImage protected-mode code loads here. */
export const HIMEM_START = 0x100000;

/** The 32-bit MMIO gap: no RAM between these addresses. */
export const MMIO_GAP_START = 0xc000_0000;
export const MMIO_GAP_END = 0x1_0000_0000;
/** Guest writes a byte here to mark "booted" (benchmarks); reads return 0. */
export const BOOT_TIMER_ADDR = 0xd000_0000;
export const BOOT_TIMER_SIZE = 0x1000;
/** virtio-mmio device windows, VIRTIO_MMIO_SIZE bytes each. */
export const VIRTIO_MMIO_BASE = 0xd000_1000;
export const VIRTIO_MMIO_SIZE = 0x1000;
/**
 * A second window per virtio-mmio device, in the same order, announced on the
 * kernel command line when the DSDT announces the first: two announcements of
 * one window would clash in the guest (devices/virtio/virtio-set.ts says why).
 */
export const VIRTIO_MMIO_CMDLINE_BASE = 0xd010_0000;
/** In-kernel IOAPIC and local APIC (fixed by KVM's irqchip). */
export const IOAPIC_START = 0xfec0_0000;
export const LAPIC_START = 0xfee0_0000;
/** KVM_SET_TSS_ADDR needs three pages below 4 GiB that are not RAM or MMIO in use. */
export const KVM_TSS_ADDRESS = 0xfffb_d000;
/** KVM_SET_IDENTITY_MAP_ADDR: one page right below the TSS pages. */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffb_c000;

/** Legacy I/O ports. */
export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
/** The i8042's keyboard interrupt: ISA IRQ 1 (drivers/input/serio/i8042-io.h I8042_KBD_IRQ). */
export const I8042_KBD_IRQ = 1;
/**
 * ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG)
 * and reset register (FADT RESET_REG), one byte each in I/O space.
 */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_RESET_PORT = 0x602;
/** Value written to the reset register to reset the machine. */
export const ACPI_RESET_VALUE = 0x1;
/** The S5 (soft-off) sleep type flint's DSDT declares in \_S5_. */
export const ACPI_S5_SLEEP_TYPE = 5;

/**
 * Where GSIs go. The in-kernel IOAPIC has pins 0..23: ISA IRQs 0-4 are the
 * PIT, the keyboard (I8042_KBD_IRQ), the cascade, COM2 and COM1 (COM1_IRQ);
 * virtio-mmio device i gets FIRST_DEVICE_IRQ + i, up to LAST_DEVICE_IRQ; the
 * last pin, GED_GSI, is the ACPI Generic Event Device's (VMGenID's notifications).
 */
export const FIRST_DEVICE_IRQ = 5;
export const LAST_DEVICE_IRQ = 22;
/** The Generic Event Device's interrupt (ACPI 6.x §5.6.9): raised on restore so the guest re-reads the VMGenID. */
export const GED_GSI = 23;

/** Smallest and largest guest memory flint accepts, in MiB. */
export const MIN_MEMORY_MIB = 32;
export const MAX_MEMORY_MIB = 1024 * 1024;

/** The guest RAM regions for a machine with `memBytes` of RAM, split around the MMIO gap. */
export function ramRegions(memBytes: number): { guestBase: number; size: number }[] {
  if (memBytes <= MMIO_GAP_START) return [{ guestBase: 0, size: memBytes }];
  return [
    { guestBase: 0, size: MMIO_GAP_START },
    { guestBase: MMIO_GAP_END, size: memBytes - MMIO_GAP_START },
  ];
}

/**
 * Optional debug-exit device (benchmarks, tests): a write to DEBUG_MARK_PORT
 * records a timestamp; a write of v to DEBUG_EXIT_PORT records one and ends
 * the VM with status v — the port QEMU's isa-debug-exit uses.
 */
export const DEBUG_MARK_PORT = 0xf0;
export const DEBUG_EXIT_PORT = 0xf4;
