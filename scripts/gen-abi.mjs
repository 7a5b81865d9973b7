#!/usr/bin/env node
// Generates src/linux/abi.generated.ts from the Linux headers on this machine.
//
// Nothing in flint's ABI is typed by hand: ioctl numbers, constants, struct
// sizes and field offsets are printed by a C program that includes the real
// headers (the UAPI headers in /usr/include, plus a few kernel-internal x86,
// Xen and ACPICA headers taken from Debian's linux-source-6.1 tarball) and
// uses sizeof/offsetof on them.
//
//   node scripts/gen-abi.mjs           regenerate the file
//   node scripts/gen-abi.mjs --check   regenerate into memory, exit 1 if it differs
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { kernelSourceFiles } from "./kernel-source.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const OUT = join(root, "src/linux/abi.generated.ts");

/** Kernel-internal headers flint needs, extracted once into the cache. */
const KERNEL_FILES = [
  "arch/x86/include/asm/msr-index.h",
  "arch/x86/include/asm/apicdef.h",
  "arch/x86/include/asm/mpspec_def.h",
  "arch/x86/include/asm/e820/types.h",
  "include/xen/interface/elfnote.h",
  "include/xen/interface/hvm/start_info.h",
  "include/acpi/*",
  "include/linux/i8042.h",
  "include/linux/libps2.h",
  // Hyper-V's synthetic MSR numbers (vCPU snapshots leave them out).
  "arch/x86/include/asm/hyperv-tlfs.h",
  "include/asm-generic/hyperv-tlfs.h",
  // ACPICA's AML opcode and resource-descriptor definitions (ACPI 6.x §20, §6.4).
  "drivers/acpi/acpica/aclocal.h",
  "drivers/acpi/acpica/amlcode.h",
  "drivers/acpi/acpica/amlresrc.h",
];

// ---------------------------------------------------------------------------
// What to generate. Constants are C expressions printed as numbers; strings
// are C string macros; structs list the fields whose offsets flint uses
// (nested members with '.', printed with '_').
// ---------------------------------------------------------------------------
const CONSTANTS = {
  "linux/kvm.h: system, VM and vCPU ioctls": `
    KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
    KVM_GET_SUPPORTED_CPUID KVM_GET_MSR_INDEX_LIST KVM_CREATE_VCPU
    KVM_SET_USER_MEMORY_REGION KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR
    KVM_CREATE_IRQCHIP KVM_CREATE_PIT2 KVM_IRQ_LINE KVM_IRQFD KVM_IOEVENTFD
    KVM_SET_GSI_ROUTING KVM_SIGNAL_MSI KVM_GET_CLOCK KVM_SET_CLOCK KVM_ENABLE_CAP
    KVM_GET_IRQCHIP KVM_SET_IRQCHIP KVM_GET_PIT2 KVM_SET_PIT2 KVM_GET_DIRTY_LOG
    KVM_RUN KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS KVM_SET_CPUID2
    KVM_GET_CPUID2 KVM_GET_MSRS KVM_SET_MSRS KVM_GET_FPU KVM_SET_FPU KVM_GET_LAPIC
    KVM_SET_LAPIC KVM_GET_MP_STATE KVM_SET_MP_STATE KVM_GET_XSAVE KVM_SET_XSAVE
    KVM_GET_XCRS KVM_SET_XCRS KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS
    KVM_GET_DEBUGREGS KVM_SET_DEBUGREGS KVM_KVMCLOCK_CTRL KVM_SET_TSC_KHZ
    KVM_GET_TSC_KHZ KVM_SET_SIGNAL_MASK KVM_NMI KVM_GET_XSAVE2`,
  "linux/kvm.h: capabilities": `
    KVM_API_VERSION KVM_CAP_IRQCHIP KVM_CAP_HLT KVM_CAP_USER_MEMORY KVM_CAP_SET_TSS_ADDR
    KVM_CAP_EXT_CPUID KVM_CAP_NR_VCPUS KVM_CAP_MAX_VCPUS KVM_CAP_NR_MEMSLOTS KVM_CAP_PIT2
    KVM_CAP_PIT_STATE2 KVM_CAP_IRQFD KVM_CAP_IOEVENTFD KVM_CAP_IMMEDIATE_EXIT
    KVM_CAP_SET_IDENTITY_MAP_ADDR KVM_CAP_ADJUST_CLOCK KVM_CAP_IRQ_ROUTING KVM_CAP_MP_STATE
    KVM_CAP_XSAVE KVM_CAP_XCRS KVM_CAP_TSC_DEADLINE_TIMER KVM_CAP_VCPU_EVENTS
    KVM_CAP_DEBUGREGS KVM_CAP_KVMCLOCK_CTRL KVM_CAP_TSC_CONTROL KVM_CAP_GET_TSC_KHZ
    KVM_CAP_SIGNAL_MSI KVM_CAP_USER_NMI KVM_CAP_SYNC_MMU KVM_CAP_EXT_EMUL_CPUID KVM_CAP_XSAVE2`,
  "linux/kvm.h: exit reasons and their sub-codes": `
    KVM_EXIT_UNKNOWN KVM_EXIT_EXCEPTION KVM_EXIT_IO KVM_EXIT_HYPERCALL KVM_EXIT_DEBUG
    KVM_EXIT_HLT KVM_EXIT_MMIO KVM_EXIT_IRQ_WINDOW_OPEN KVM_EXIT_SHUTDOWN KVM_EXIT_FAIL_ENTRY
    KVM_EXIT_INTR KVM_EXIT_SET_TPR KVM_EXIT_TPR_ACCESS KVM_EXIT_NMI KVM_EXIT_INTERNAL_ERROR
    KVM_EXIT_OSI KVM_EXIT_PAPR_HCALL KVM_EXIT_WATCHDOG KVM_EXIT_EPR KVM_EXIT_SYSTEM_EVENT
    KVM_EXIT_IOAPIC_EOI KVM_EXIT_HYPERV KVM_EXIT_X86_RDMSR KVM_EXIT_X86_WRMSR
    KVM_EXIT_DIRTY_RING_FULL KVM_EXIT_AP_RESET_HOLD KVM_EXIT_X86_BUS_LOCK KVM_EXIT_XEN
    KVM_EXIT_NOTIFY KVM_EXIT_IO_IN KVM_EXIT_IO_OUT KVM_SYSTEM_EVENT_SHUTDOWN
    KVM_SYSTEM_EVENT_RESET KVM_SYSTEM_EVENT_CRASH KVM_INTERNAL_ERROR_EMULATION
    KVM_INTERNAL_ERROR_SIMUL_EX KVM_INTERNAL_ERROR_DELIVERY_EV
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON`,
  "linux/kvm.h: flags and states": `
    KVM_MEM_LOG_DIRTY_PAGES KVM_MEM_READONLY KVM_PIT_SPEAKER_DUMMY KVM_MP_STATE_RUNNABLE
    KVM_MP_STATE_UNINITIALIZED KVM_MP_STATE_HALTED KVM_IRQFD_FLAG_DEASSIGN
    KVM_IRQFD_FLAG_RESAMPLE KVM_IOEVENTFD_FLAG_DATAMATCH KVM_IOEVENTFD_FLAG_PIO
    KVM_IOEVENTFD_FLAG_DEASSIGN KVM_CPUID_FLAG_SIGNIFCANT_INDEX KVM_IRQCHIP_PIC_MASTER
    KVM_IRQCHIP_PIC_SLAVE KVM_IRQCHIP_IOAPIC KVM_IOAPIC_NUM_PINS KVM_CLOCK_TSC_STABLE
    KVM_CLOCK_REALTIME KVM_CLOCK_HOST_TSC KVM_MAX_XCRS`,
  "asm/kvm_para.h: KVM paravirtual CPUID leaves and features": `
    KVM_CPUID_SIGNATURE KVM_CPUID_FEATURES KVM_FEATURE_CLOCKSOURCE KVM_FEATURE_NOP_IO_DELAY
    KVM_FEATURE_MMU_OP KVM_FEATURE_CLOCKSOURCE2 KVM_FEATURE_ASYNC_PF KVM_FEATURE_STEAL_TIME
    KVM_FEATURE_PV_EOI KVM_FEATURE_PV_UNHALT KVM_FEATURE_PV_TLB_FLUSH KVM_FEATURE_PV_SEND_IPI
    KVM_FEATURE_POLL_CONTROL KVM_FEATURE_PV_SCHED_YIELD KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
    KVM_HINTS_REALTIME MSR_KVM_WALL_CLOCK_NEW MSR_KVM_SYSTEM_TIME_NEW`,
  "unistd.h: lseek whence for sparse files": `
    SEEK_DATA SEEK_HOLE`,
  "sys/mman.h, sys/eventfd.h, signal.h, errno.h": `
    PROT_NONE PROT_READ PROT_WRITE MAP_SHARED MAP_PRIVATE MAP_ANONYMOUS MAP_NORESERVE MAP_FIXED
    MADV_NORMAL MADV_DONTNEED MADV_REMOVE MADV_HUGEPAGE MADV_NOHUGEPAGE MADV_MERGEABLE
    MADV_UNMERGEABLE MADV_DONTDUMP EFD_NONBLOCK EFD_CLOEXEC EFD_SEMAPHORE
    EINTR EAGAIN EFAULT EINVAL ENOMEM EEXIST ENXIO ENOENT EACCES EPERM E2BIG EBUSY ENOSYS EOPNOTSUPP ENODEV`,
  "asm/bootparam.h: Linux x86 boot protocol (Documentation/x86/boot.rst)": `
    LOADED_HIGH KASLR_FLAG QUIET_FLAG KEEP_SEGMENTS CAN_USE_HEAP XLF_KERNEL_64
    XLF_CAN_BE_LOADED_ABOVE_4G XLF_EFI_HANDOVER_32 XLF_EFI_HANDOVER_64 XLF_EFI_KEXEC
    SETUP_NONE SETUP_E820_EXT SETUP_DTB E820_MAX_ENTRIES_ZEROPAGE`,
  "asm/e820/types.h: e820 memory types": `
    E820_TYPE_RAM E820_TYPE_RESERVED E820_TYPE_ACPI E820_TYPE_NVS E820_TYPE_UNUSABLE`,
  "asm/processor-flags.h: control registers and RFLAGS": `
    X86_EFLAGS_CF X86_EFLAGS_FIXED X86_EFLAGS_IF X86_EFLAGS_IOPL X86_EFLAGS_IOPL_BIT
    X86_CR0_PE X86_CR0_MP X86_CR0_ET X86_CR0_NE X86_CR0_WP X86_CR0_AM X86_CR0_NW X86_CR0_CD
    X86_CR0_PG X86_CR4_PAE X86_CR4_PGE X86_CR4_OSFXSR X86_CR4_OSXMMEXCPT X86_CR4_OSXSAVE`,
  "asm/msr-index.h: model-specific registers": `
    MSR_EFER EFER_SCE EFER_LME EFER_LMA EFER_NX MSR_STAR MSR_LSTAR MSR_CSTAR MSR_SYSCALL_MASK
    MSR_KERNEL_GS_BASE MSR_FS_BASE MSR_GS_BASE MSR_IA32_SYSENTER_CS MSR_IA32_SYSENTER_ESP
    MSR_IA32_SYSENTER_EIP MSR_IA32_TSC MSR_IA32_MISC_ENABLE MSR_IA32_MISC_ENABLE_FAST_STRING
    MSR_MTRRdefType MSR_IA32_APICBASE MSR_IA32_APICBASE_BSP MSR_IA32_APICBASE_ENABLE
    MSR_IA32_CR_PAT MSR_IA32_TSC_DEADLINE`,
  "asm/mtrr.h: memory types": `MTRR_TYPE_UNCACHABLE MTRR_TYPE_WRBACK`,
  "asm/msr-index.h, asm/mtrr.h, asm/hyperv-tlfs.h: MSRs a vCPU snapshot adds to KVM_GET_MSR_INDEX_LIST or leaves out": `
    MSR_MTRRcap MTRRphysBase_MSR(0) MTRRphysMask_MSR(0) MTRRphysBase_MSR(1) MSR_MTRRfix64K_00000
    MSR_MTRRfix16K_80000 MSR_MTRRfix16K_A0000 MSR_MTRRfix4K_C0000 MSR_MTRRfix4K_C8000 MSR_MTRRfix4K_D0000
    MSR_MTRRfix4K_D8000 MSR_MTRRfix4K_E0000 MSR_MTRRfix4K_E8000 MSR_MTRRfix4K_F0000 MSR_MTRRfix4K_F8000
    MSR_IA32_MCG_CAP MSR_IA32_MC0_CTL MSR_IA32_MC0_STATUS MSR_IA32_MC0_ADDR MSR_IA32_MC0_MISC
    MSR_IA32_MCx_CTL(1) MSR_IA32_VMX_BASIC MSR_IA32_VMX_VMFUNC HV_X64_MSR_GUEST_OS_ID
    HV_X64_MSR_TSC_INVARIANT_CONTROL`,
  "asm/apicdef.h: local APIC": `
    APIC_DEFAULT_PHYS_BASE IO_APIC_DEFAULT_PHYS_BASE APIC_ID APIC_LVT0 APIC_LVT1 APIC_SPIV
    APIC_MODE_NMI APIC_MODE_EXTINT APIC_DM_NMI APIC_DM_EXTINT APIC_LVT_MASKED`,
  "asm/mpspec_def.h: Intel MultiProcessor Specification tables": `
    SMP_MAGIC_IDENT MP_PROCESSOR MP_BUS MP_IOAPIC MP_INTSRC MP_LINTSRC CPU_ENABLED
    CPU_BOOTPROCESSOR MPC_APIC_USABLE MP_IRQPOL_DEFAULT MP_IRQPOL_ACTIVE_HIGH
    MP_IRQPOL_ACTIVE_LOW MP_IRQTRIG_DEFAULT MP_IRQTRIG_EDGE MP_IRQTRIG_LEVEL MP_APIC_ALL
    mp_INT mp_NMI mp_ExtINT`,
  "elf.h and xen/interface/elfnote.h: kernel images": `
    ELFCLASS64 ELFDATA2LSB EV_CURRENT ET_EXEC EM_X86_64 PT_LOAD PT_NOTE EI_CLASS EI_DATA
    XEN_ELFNOTE_PHYS32_ENTRY`,
  "xen/interface/hvm/start_info.h: PVH boot": `
    XEN_HVM_START_MAGIC_VALUE XEN_HVM_MEMMAP_TYPE_RAM XEN_HVM_MEMMAP_TYPE_RESERVED
    XEN_HVM_MEMMAP_TYPE_ACPI`,
  "linux/serial_reg.h: 8250/16550 UART": `
    UART_RX UART_TX UART_DLL UART_DLM UART_IER UART_IIR UART_FCR UART_LCR UART_MCR UART_LSR
    UART_MSR UART_SCR UART_IER_RDI UART_IER_THRI UART_IER_RLSI UART_IER_MSI UART_IIR_NO_INT
    UART_IIR_ID UART_IIR_MSI UART_IIR_THRI UART_IIR_RDI UART_IIR_RLSI
    UART_FCR_ENABLE_FIFO UART_FCR_CLEAR_RCVR UART_FCR_CLEAR_XMIT UART_LCR_DLAB UART_MCR_LOOP
    UART_MCR_OUT2 UART_MCR_RTS UART_MCR_DTR UART_MCR_OUT1 UART_LSR_DR UART_LSR_OE UART_LSR_THRE
    UART_LSR_TEMT UART_LSR_BI UART_MSR_DCD UART_MSR_RI UART_MSR_DSR UART_MSR_CTS
    UART_EFR UART_IER_UUE UART_FCR7_64BYTE UART_LCR_WLEN8 UART_LCR_CONF_MODE_A
    UART_LCR_CONF_MODE_B UART_LSR_FIFOE UART_LSR_FE UART_LSR_PE UART_LSR_BRK_ERROR_BITS
    UART_MSR_DDCD UART_MSR_TERI UART_MSR_DDSR UART_MSR_DCTS UART_MSR_ANY_DELTA`,
  "linux/i8042.h: PS/2 controller commands (low byte is the command), status and control bits": `
    I8042_CMD_CTL_RCTR I8042_CMD_CTL_WCTR I8042_CMD_CTL_TEST I8042_CMD_KBD_DISABLE
    I8042_CMD_KBD_ENABLE I8042_CMD_KBD_TEST I8042_CMD_KBD_LOOP I8042_CMD_AUX_DISABLE
    I8042_CMD_AUX_ENABLE I8042_CMD_AUX_TEST I8042_CMD_AUX_SEND I8042_CMD_AUX_LOOP
    I8042_STR_PARITY I8042_STR_TIMEOUT I8042_STR_AUXDATA I8042_STR_KEYLOCK I8042_STR_CMDDAT
    I8042_STR_MUXERR I8042_STR_IBF I8042_STR_OBF I8042_CTR_KBDINT I8042_CTR_AUXINT
    I8042_CTR_IGNKEYLOCK I8042_CTR_KBDDIS I8042_CTR_AUXDIS I8042_CTR_XLATE`,
  "linux/input-event-codes.h: key codes (what atkbd reports for the keys flint types)": `
    KEY_LEFTCTRL KEY_LEFTALT KEY_DELETE`,
  "linux/libps2.h: PS/2 device commands (parameter/result counts above the low byte) and replies": `
    PS2_CMD_GETID PS2_CMD_RESET_BAT PS2_RET_BAT PS2_RET_ACK PS2_RET_NAK`,
  "acpi/actbl*.h: ACPI tables (ACPICA)": `
    ACPI_FADT_HW_REDUCED ACPI_FADT_POWER_BUTTON ACPI_FADT_SLEEP_BUTTON ACPI_FADT_RESET_REGISTER
    ACPI_FADT_APIC_PHYSICAL ACPI_FADT_APIC_CLUSTER ACPI_FADT_NO_VGA ACPI_FADT_NO_MSI
    ACPI_FADT_NO_ASPM ACPI_FADT_NO_CMOS_RTC ACPI_FADT_8042 ACPI_FADT_LEGACY_DEVICES
    ACPI_ADR_SPACE_SYSTEM_MEMORY ACPI_ADR_SPACE_SYSTEM_IO ACPI_MADT_TYPE_LOCAL_APIC
    ACPI_MADT_TYPE_IO_APIC ACPI_MADT_TYPE_INTERRUPT_OVERRIDE ACPI_MADT_TYPE_LOCAL_APIC_NMI
    ACPI_MADT_ENABLED ACPI_MADT_PCAT_COMPAT ACPI_MADT_POLARITY_ACTIVE_HIGH
    ACPI_MADT_TRIGGER_EDGE ACPI_MADT_POLARITY_ACTIVE_LOW ACPI_MADT_TRIGGER_LEVEL
    ACPI_X_SLEEP_TYPE_MASK
    ACPI_X_SLEEP_TYPE_POSITION ACPI_X_SLEEP_ENABLE ACPI_X_WAKE_STATUS
    ACPI_NAMESEG_SIZE ACPI_OEM_ID_SIZE ACPI_OEM_TABLE_ID_SIZE`,
  "acpi/acconfig.h, actypes.h, actbl2.h: more ACPI table constants": `
    ACPI_RSDP_CHECKSUM_LENGTH ACPI_RSDP_XCHECKSUM_LENGTH ACPI_ACCESS_BIT_SHIFT
    ACPI_MADT_POLARITY_CONFORMS ACPI_MADT_TRIGGER_CONFORMS`,
  "acpica amlcode.h, aclocal.h, acrestyp.h: AML encoding and resource descriptors": `
    AML_ZERO_OP AML_ONE_OP AML_ONES_OP AML_NAME_OP AML_BYTE_OP AML_WORD_OP AML_DWORD_OP
    AML_QWORD_OP AML_STRING_OP AML_SCOPE_OP AML_BUFFER_OP AML_PACKAGE_OP AML_METHOD_OP
    AML_RETURN_OP AML_DUAL_NAME_PREFIX AML_MULTI_NAME_PREFIX AML_ROOT_PREFIX AML_PARENT_PREFIX
    AML_EXTENDED_PREFIX AML_DEVICE_OP AML_METHOD_ARG_COUNT AML_METHOD_SERIALIZED
    AML_IF_OP AML_LOGICAL_EQUAL_OP AML_NOTIFY_OP AML_ARG0
    ACPI_RESOURCE_NAME_LARGE ACPI_RESOURCE_NAME_IRQ ACPI_RESOURCE_NAME_IO
    ACPI_RESOURCE_NAME_END_TAG ACPI_RESOURCE_NAME_FIXED_MEMORY32 ACPI_RESOURCE_NAME_EXTENDED_IRQ
    ACPI_DECODE_16 ACPI_READ_ONLY_MEMORY ACPI_READ_WRITE_MEMORY ACPI_CONSUMER
    ACPI_LEVEL_SENSITIVE ACPI_EDGE_SENSITIVE ACPI_ACTIVE_HIGH ACPI_ACTIVE_LOW ACPI_EXCLUSIVE
    ACPI_SHARED`,
  "elf.h: identification bytes": `
    EI_NIDENT EI_MAG0 EI_MAG1 EI_MAG2 EI_MAG3 ELFMAG0 ELFMAG1 ELFMAG2 ELFMAG3 EI_VERSION ET_DYN`,
};

Object.assign(CONSTANTS, {
  "linux/virtio_mmio.h: virtio-mmio transport registers (virtio 1.x §4.2.2)": `
    VIRTIO_MMIO_MAGIC_VALUE VIRTIO_MMIO_VERSION VIRTIO_MMIO_DEVICE_ID VIRTIO_MMIO_VENDOR_ID
    VIRTIO_MMIO_DEVICE_FEATURES VIRTIO_MMIO_DEVICE_FEATURES_SEL VIRTIO_MMIO_DRIVER_FEATURES
    VIRTIO_MMIO_DRIVER_FEATURES_SEL VIRTIO_MMIO_GUEST_PAGE_SIZE VIRTIO_MMIO_QUEUE_SEL VIRTIO_MMIO_QUEUE_NUM_MAX
    VIRTIO_MMIO_QUEUE_NUM VIRTIO_MMIO_QUEUE_ALIGN VIRTIO_MMIO_QUEUE_PFN VIRTIO_MMIO_QUEUE_READY
    VIRTIO_MMIO_QUEUE_NOTIFY VIRTIO_MMIO_INTERRUPT_STATUS VIRTIO_MMIO_INTERRUPT_ACK VIRTIO_MMIO_STATUS
    VIRTIO_MMIO_QUEUE_DESC_LOW VIRTIO_MMIO_QUEUE_DESC_HIGH VIRTIO_MMIO_QUEUE_AVAIL_LOW VIRTIO_MMIO_QUEUE_AVAIL_HIGH
    VIRTIO_MMIO_QUEUE_USED_LOW VIRTIO_MMIO_QUEUE_USED_HIGH VIRTIO_MMIO_SHM_SEL VIRTIO_MMIO_SHM_LEN_LOW
    VIRTIO_MMIO_SHM_LEN_HIGH VIRTIO_MMIO_SHM_BASE_LOW VIRTIO_MMIO_SHM_BASE_HIGH VIRTIO_MMIO_CONFIG_GENERATION
    VIRTIO_MMIO_CONFIG VIRTIO_MMIO_INT_VRING VIRTIO_MMIO_INT_CONFIG`,
  "linux/virtio_config.h, virtio_ids.h: status, features, device ids": `
    VIRTIO_CONFIG_S_ACKNOWLEDGE VIRTIO_CONFIG_S_DRIVER VIRTIO_CONFIG_S_DRIVER_OK VIRTIO_CONFIG_S_FEATURES_OK
    VIRTIO_CONFIG_S_NEEDS_RESET VIRTIO_CONFIG_S_FAILED VIRTIO_TRANSPORT_F_START VIRTIO_TRANSPORT_F_END
    VIRTIO_F_NOTIFY_ON_EMPTY VIRTIO_F_ANY_LAYOUT VIRTIO_F_VERSION_1 VIRTIO_F_ACCESS_PLATFORM VIRTIO_F_RING_PACKED
    VIRTIO_F_IN_ORDER VIRTIO_F_ORDER_PLATFORM VIRTIO_F_RING_RESET
    VIRTIO_ID_NET VIRTIO_ID_BLOCK VIRTIO_ID_CONSOLE VIRTIO_ID_RNG VIRTIO_ID_BALLOON VIRTIO_ID_VSOCK`,
  "linux/virtio_ring.h: split virtqueues": `
    VRING_DESC_F_NEXT VRING_DESC_F_WRITE VRING_DESC_F_INDIRECT VRING_USED_F_NO_NOTIFY VRING_AVAIL_F_NO_INTERRUPT
    VIRTIO_RING_F_INDIRECT_DESC VIRTIO_RING_F_EVENT_IDX VRING_AVAIL_ALIGN_SIZE VRING_USED_ALIGN_SIZE
    VRING_DESC_ALIGN_SIZE`,
  "linux/virtio_blk.h: block device": `
    VIRTIO_BLK_F_SIZE_MAX VIRTIO_BLK_F_SEG_MAX VIRTIO_BLK_F_GEOMETRY VIRTIO_BLK_F_RO VIRTIO_BLK_F_BLK_SIZE
    VIRTIO_BLK_F_TOPOLOGY VIRTIO_BLK_F_MQ VIRTIO_BLK_F_DISCARD VIRTIO_BLK_F_WRITE_ZEROES VIRTIO_BLK_F_FLUSH
    VIRTIO_BLK_F_CONFIG_WCE VIRTIO_BLK_T_IN VIRTIO_BLK_T_OUT VIRTIO_BLK_T_FLUSH VIRTIO_BLK_T_GET_ID
    VIRTIO_BLK_T_DISCARD VIRTIO_BLK_T_WRITE_ZEROES VIRTIO_BLK_S_OK VIRTIO_BLK_S_IOERR VIRTIO_BLK_S_UNSUPP
    VIRTIO_BLK_ID_BYTES VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`,
  "linux/virtio_net.h: network device": `
    VIRTIO_NET_F_CSUM VIRTIO_NET_F_GUEST_CSUM VIRTIO_NET_F_MTU VIRTIO_NET_F_MAC VIRTIO_NET_F_GUEST_TSO4
    VIRTIO_NET_F_GUEST_TSO6 VIRTIO_NET_F_GUEST_ECN VIRTIO_NET_F_GUEST_UFO VIRTIO_NET_F_HOST_TSO4
    VIRTIO_NET_F_HOST_TSO6 VIRTIO_NET_F_HOST_ECN VIRTIO_NET_F_HOST_UFO VIRTIO_NET_F_MRG_RXBUF VIRTIO_NET_F_STATUS
    VIRTIO_NET_F_CTRL_VQ VIRTIO_NET_F_MQ VIRTIO_NET_S_LINK_UP VIRTIO_NET_HDR_F_NEEDS_CSUM
    VIRTIO_NET_HDR_F_DATA_VALID VIRTIO_NET_HDR_GSO_NONE VIRTIO_NET_HDR_GSO_TCPV4 VIRTIO_NET_HDR_GSO_UDP
    VIRTIO_NET_HDR_GSO_TCPV6 VIRTIO_NET_HDR_GSO_ECN`,
  "linux/virtio_vsock.h: socket device": `
    VIRTIO_VSOCK_F_SEQPACKET VIRTIO_VSOCK_EVENT_TRANSPORT_RESET VIRTIO_VSOCK_TYPE_STREAM
    VIRTIO_VSOCK_TYPE_SEQPACKET VIRTIO_VSOCK_OP_INVALID VIRTIO_VSOCK_OP_REQUEST VIRTIO_VSOCK_OP_RESPONSE
    VIRTIO_VSOCK_OP_RST VIRTIO_VSOCK_OP_SHUTDOWN VIRTIO_VSOCK_OP_RW VIRTIO_VSOCK_OP_CREDIT_UPDATE
    VIRTIO_VSOCK_OP_CREDIT_REQUEST VIRTIO_VSOCK_SHUTDOWN_RCV VIRTIO_VSOCK_SHUTDOWN_SEND
    VMADDR_CID_ANY VMADDR_CID_HYPERVISOR VMADDR_CID_LOCAL VMADDR_CID_HOST`,
  "linux/virtio_balloon.h: memory balloon": `
    VIRTIO_BALLOON_F_MUST_TELL_HOST VIRTIO_BALLOON_F_STATS_VQ VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    VIRTIO_BALLOON_F_FREE_PAGE_HINT VIRTIO_BALLOON_F_PAGE_POISON VIRTIO_BALLOON_F_REPORTING
    VIRTIO_BALLOON_PFN_SHIFT VIRTIO_BALLOON_S_SWAP_IN VIRTIO_BALLOON_S_SWAP_OUT VIRTIO_BALLOON_S_MAJFLT
    VIRTIO_BALLOON_S_MINFLT VIRTIO_BALLOON_S_MEMFREE VIRTIO_BALLOON_S_MEMTOT VIRTIO_BALLOON_S_AVAIL
    VIRTIO_BALLOON_S_CACHES VIRTIO_BALLOON_S_HTLB_PGALLOC VIRTIO_BALLOON_S_HTLB_PGFAIL VIRTIO_BALLOON_S_NR`,
  "linux/if_tun.h, linux/if.h, net: TAP devices and sockets": `
    TUNSETIFF TUNGETIFF TUNSETOFFLOAD TUNSETVNETHDRSZ TUNGETVNETHDRSZ TUNGETFEATURES IFF_TAP IFF_NO_PI
    IFF_VNET_HDR IFF_ONE_QUEUE IFF_MULTI_QUEUE TUN_F_CSUM TUN_F_TSO4 TUN_F_TSO6 TUN_F_TSO_ECN TUN_F_UFO
    IFNAMSIZ AF_UNIX AF_INET SOCK_STREAM SOCK_NONBLOCK SOCK_CLOEXEC O_NONBLOCK O_RDWR O_CLOEXEC
    POLLIN POLLOUT IOV_MAX POLLERR POLLHUP POLLNVAL FALLOC_FL_KEEP_SIZE FALLOC_FL_PUNCH_HOLE FALLOC_FL_ZERO_RANGE
    ENOSPC EIO EPIPE ECONNREFUSED ECONNRESET EADDRINUSE ENOTCONN EINPROGRESS
    SHUT_RD SHUT_WR SHUT_RDWR ENAMETOOLONG ENOTSOCK SOCK_DGRAM ETH_HLEN ETH_ALEN ETH_FRAME_LEN FIONREAD SIOCGIFINDEX`,
});

// virtio-net checksum and segmentation offloads: what the device checks in a frame before
// passing an offload request on to the TAP (virtio 1.x §5.1.6.2).
Object.assign(CONSTANTS, {
  "linux/if_ether.h, linux/in.h, linux/virtio_net.h: frames that carry offload requests": `
    ETH_P_IP ETH_P_IPV6 ETH_P_8021Q ETH_P_8021AD ETH_TLEN ETH_MAX_MTU IPPROTO_TCP
    VIRTIO_NET_HDR_F_RSC_INFO`,
});

// MMDS's responder (devices/virtio/mmds): ARP requests for its address and TCP over IPv4.
Object.assign(CONSTANTS, {
  "net/if_arp.h, linux/if_ether.h: ARP for the MMDS address": `ETH_P_ARP ARPHRD_ETHER ARPOP_REQUEST ARPOP_REPLY`,
});

// Snapshot restore with a userfaultfd memory backend (Firecracker's Uffd): the userfaultfd, its
// ioctls and messages, and the SCM_RIGHTS message that hands it to a page-fault handler.
Object.assign(CONSTANTS, {
  "linux/userfaultfd.h: userfaultfd(2), its ioctls, registration modes, features and events": `
    __NR_userfaultfd USERFAULTFD_IOC_NEW UFFD_API UFFD_USER_MODE_ONLY UFFDIO_API UFFDIO_REGISTER
    UFFDIO_UNREGISTER UFFDIO_WAKE UFFDIO_COPY UFFDIO_ZEROPAGE UFFDIO_REGISTER_MODE_MISSING
    UFFDIO_COPY_MODE_DONTWAKE UFFDIO_ZEROPAGE_MODE_DONTWAKE UFFD_FEATURE_EVENT_REMOVE
    UFFD_EVENT_PAGEFAULT UFFD_EVENT_FORK UFFD_EVENT_REMAP UFFD_EVENT_REMOVE UFFD_EVENT_UNMAP
    UFFD_PAGEFAULT_FLAG_WRITE _UFFDIO_COPY _UFFDIO_ZEROPAGE _UFFDIO_WAKE
    ESRCH POLLRDHUP SCM_RIGHTS MSG_NOSIGNAL MSG_CMSG_CLOEXEC MSG_CTRUNC SOMAXCONN`,
});

// virtio-blk over a host block device (an LVM volume, a device-mapper target): its size.
Object.assign(CONSTANTS, {
  "linux/fs.h: host block devices": `BLKGETSIZE64`,
});

// seccomp-BPF filters (src/seccomp): the filter's input, return actions and the classic BPF
// opcodes (Documentation/userspace-api/seccomp_filter.rst, linux/filter.h, linux/bpf_common.h).
Object.assign(CONSTANTS, {
  "linux/seccomp.h, linux/audit.h, linux/filter.h, linux/prctl.h: seccomp-BPF filters": `
    SECCOMP_SET_MODE_FILTER SECCOMP_FILTER_FLAG_TSYNC SECCOMP_FILTER_FLAG_LOG
    SECCOMP_RET_KILL_PROCESS SECCOMP_RET_KILL_THREAD SECCOMP_RET_TRAP SECCOMP_RET_ERRNO SECCOMP_RET_LOG
    SECCOMP_RET_ALLOW SECCOMP_RET_ACTION_FULL SECCOMP_RET_DATA AUDIT_ARCH_X86_64 __X32_SYSCALL_BIT
    BPF_LD BPF_LDX BPF_ST BPF_STX BPF_ALU BPF_JMP BPF_RET BPF_MISC BPF_W BPF_H BPF_B BPF_IMM BPF_ABS BPF_IND BPF_MEM
    BPF_LEN BPF_MSH BPF_ADD BPF_SUB BPF_MUL BPF_DIV BPF_OR BPF_AND BPF_LSH BPF_RSH BPF_NEG BPF_MOD BPF_XOR
    BPF_JA BPF_JEQ BPF_JGT BPF_JGE BPF_JSET BPF_K BPF_X BPF_A BPF_TAX BPF_TXA BPF_MAXINSNS BPF_MEMWORDS
    PR_SET_NO_NEW_PRIVS PR_GET_NO_NEW_PRIVS PR_GET_SECCOMP CLONE_THREAD CLONE_VM CLONE_VFORK`,
});

/** The x86-64 system call table (asm/unistd_64.h): every __NR_ name, printed through the compiler. */
function syscallNames() {
  const header = readFileSync("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "utf8");
  return [...header.matchAll(/^#define __NR_(\w+)\s/gm)].map((m) => m[1]);
}

const STRINGS = `
  ACPI_SIG_RSDP ACPI_SIG_XSDT ACPI_SIG_FADT ACPI_SIG_MADT ACPI_SIG_DSDT MPC_SIGNATURE
  BUSTYPE_ISA`;

const STRUCTS = [
  ["kvm_run", `exit_reason immediate_exit ready_for_interrupt_injection if_flag flags cr8 apic_base
    hw.hardware_exit_reason fail_entry.hardware_entry_failure_reason fail_entry.cpu
    ex.exception ex.error_code io.direction io.size io.port io.count io.data_offset
    mmio.phys_addr mmio.data mmio.len mmio.is_write internal.suberror internal.ndata
    internal.data system_event.type system_event.ndata system_event.data`],
  ["seccomp_data", `nr arch instruction_pointer args`],
  ["sock_filter", `code jt jf k`],
  ["kvm_regs", `rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags`],
  ["kvm_segment", `base limit selector type present dpl db s l g avl unusable`],
  ["kvm_dtable", `base limit`],
  ["kvm_sregs", `cs ds es fs gs ss tr ldt gdt idt cr0 cr2 cr3 cr4 cr8 efer apic_base interrupt_bitmap`],
  ["kvm_fpu", `fpr fcw fsw ftwx last_opcode last_ip last_dp xmm mxcsr`],
  ["kvm_msr_entry", `index data`],
  ["kvm_msrs", `nmsrs entries`],
  ["kvm_msr_list", `nmsrs indices`],
  ["kvm_cpuid_entry2", `function index flags eax ebx ecx edx`],
  ["kvm_cpuid2", `nent entries`],
  ["kvm_userspace_memory_region", `slot flags guest_phys_addr memory_size userspace_addr`],
  ["kvm_pit_config", `flags`],
  ["kvm_irq_level", `irq level`],
  ["kvm_irqfd", `fd gsi flags resamplefd`],
  ["kvm_ioeventfd", `datamatch addr len fd flags`],
  ["kvm_lapic_state", `regs`],
  ["kvm_mp_state", `mp_state`],
  ["kvm_clock_data", `clock flags realtime host_tsc`],
  ["kvm_xsave", `region`],
  ["kvm_xcr", `xcr value`],
  ["kvm_xcrs", `nr_xcrs flags xcrs`],
  ["kvm_debugregs", `db dr6 dr7 flags`],
  ["kvm_vcpu_events", `flags nmi.masked`],
  ["kvm_irqchip", `chip_id chip`],
  ["kvm_pit_state2", `channels flags`],
  ["kvm_pit_channel_state", `count count_load_time`],
  ["kvm_pic_state", `imr`],
  ["kvm_ioapic_state", `id`],
  ["boot_params", `screen_info acpi_rsdp_addr ext_ramdisk_image ext_ramdisk_size ext_cmd_line_ptr
    e820_entries hdr e820_table`],
  ["setup_header", `setup_sects root_flags syssize ram_size vid_mode root_dev boot_flag jump header
    version realmode_swtch start_sys_seg kernel_version type_of_loader loadflags setup_move_size
    code32_start ramdisk_image ramdisk_size bootsect_kludge heap_end_ptr ext_loader_ver
    ext_loader_type cmd_line_ptr initrd_addr_max kernel_alignment relocatable_kernel
    min_alignment xloadflags cmdline_size hardware_subarch hardware_subarch_data payload_offset
    payload_length setup_data pref_address init_size handover_offset kernel_info_offset`],
  ["boot_e820_entry", `addr size type`],
  ["Elf64_Ehdr", `e_ident e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize
    e_phentsize e_phnum e_shentsize e_shnum e_shstrndx`],
  ["Elf64_Phdr", `p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align`],
  ["Elf64_Nhdr", `n_namesz n_descsz n_type`],
  ["hvm_start_info", `magic version flags nr_modules modlist_paddr cmdline_paddr rsdp_paddr
    memmap_paddr memmap_entries reserved`],
  ["hvm_memmap_table_entry", `addr size type reserved`],
  ["hvm_modlist_entry", `paddr size cmdline_paddr reserved`],
  ["mpf_intel", `signature physptr length specification checksum feature1 feature2 feature3
    feature4 feature5`],
  ["mpc_table", `signature length spec checksum oem productid oemptr oemsize oemcount lapic
    reserved`],
  ["mpc_cpu", `type apicid apicver cpuflag cpufeature featureflag reserved`],
  ["mpc_bus", `type busid bustype`],
  ["mpc_ioapic", `type apicid apicver flags apicaddr`],
  ["mpc_intsrc", `type irqtype irqflag srcbus srcbusirq dstapic dstirq`],
  ["mpc_lintsrc", `type irqtype irqflag srcbusid srcbusirq destapic destapiclint`],
  ["acpi_table_header", `signature length revision checksum oem_id oem_table_id oem_revision
    asl_compiler_id asl_compiler_revision`],
  ["acpi_table_rsdp", `signature checksum oem_id revision rsdt_physical_address length
    xsdt_physical_address extended_checksum reserved`],
  ["acpi_generic_address", `space_id bit_width bit_offset access_width address`],
  ["acpi_table_fadt", `header facs dsdt model preferred_profile sci_interrupt smi_command
    boot_flags flags reset_register reset_value arm_boot_flags minor_revision Xfacs Xdsdt
    sleep_control sleep_status hypervisor_id`],
  ["acpi_table_madt", `header address flags`],
  ["acpi_subtable_header", `type length`],
  ["acpi_madt_local_apic", `header processor_id id lapic_flags`],
  ["acpi_madt_io_apic", `header id reserved address global_irq_base`],
  ["acpi_madt_interrupt_override", `header bus source_irq global_irq inti_flags`],
  ["acpi_madt_local_apic_nmi", `header processor_id inti_flags lint`],
  ["acpi_table_xsdt", `header table_offset_entry`],
  ["aml_resource_irq", `descriptor_type irq_mask flags`],
  ["aml_resource_irq_noflags", `descriptor_type irq_mask`],
  ["aml_resource_io", `descriptor_type flags minimum maximum alignment address_length`],
  ["aml_resource_end_tag", `descriptor_type checksum`],
  ["aml_resource_large_header", `descriptor_type resource_length`],
  ["aml_resource_fixed_memory32", `descriptor_type resource_length flags address address_length`],
  ["aml_resource_extended_irq", `descriptor_type resource_length flags interrupt_count interrupts`],
];

// virtio rings and devices, TAP and socket structs.
STRUCTS.push(
  ["vring_desc", `addr len flags next`],
  ["vring_avail", `flags idx ring`],
  ["vring_used_elem", `id len`],
  ["vring_used", `flags idx ring`],
  ["virtio_blk_config", `capacity size_max seg_max blk_size physical_block_exp alignment_offset min_io_size
    opt_io_size wce num_queues max_discard_sectors max_discard_seg discard_sector_alignment
    max_write_zeroes_sectors max_write_zeroes_seg write_zeroes_may_unmap`],
  ["virtio_blk_outhdr", `type ioprio sector`],
  ["virtio_blk_discard_write_zeroes", `sector num_sectors flags`],
  ["virtio_net_config", `mac status max_virtqueue_pairs mtu`],
  ["virtio_net_hdr_v1", `flags gso_type hdr_len gso_size csum_start csum_offset num_buffers`],
  ["virtio_vsock_config", `guest_cid`],
  ["virtio_vsock_event", `id`],
  ["virtio_vsock_hdr", `src_cid dst_cid src_port dst_port len type op flags buf_alloc fwd_cnt`],
  ["virtio_balloon_config", `num_pages actual free_page_hint_cmd_id poison_val`],
  ["virtio_balloon_stat", `tag val`],
  ["ifreq", `ifr_name ifr_flags`],
  ["sockaddr_un", `sun_family sun_path`],
  ["pollfd", `fd events revents`],
  ["iovec", `iov_base iov_len`],
);

// userfaultfd (linux/userfaultfd.h): what flint registers and what a page-fault handler reads and does.
STRUCTS.push(
  ["uffdio_api", `api features ioctls`],
  ["uffdio_range", `start len`],
  ["uffdio_register", `range mode ioctls`],
  ["uffdio_copy", `dst src len mode copy`],
  ["uffdio_zeropage", `range mode zeropage`],
  ["uffd_msg", `event arg.pagefault.flags arg.pagefault.address arg.remove.start arg.remove.end`],
);

// Network and transport headers inside a virtio-net frame (offload checks), and the one UAPI
// struct that is exactly an 802.1Q/802.1ad tag (TPID + TCI).
STRUCTS.push(
  ["iphdr", `tos tot_len id frag_off ttl protocol check saddr daddr`],
  ["ipv6hdr", `payload_len nexthdr`],
  ["tcphdr", `source dest seq ack_seq window check urg_ptr`],
  ["ovs_action_push_vlan", `vlan_tpid vlan_tci`],
);

// MMDS's responder on the virtio-net data path (devices/virtio/mmds): the Ethernet, ARP
// (RFC 826) headers it reads and writes.
STRUCTS.push(
  ["ethhdr", `h_dest h_source h_proto`],
  ["arphdr", `ar_hrd ar_pro ar_hln ar_pln ar_op`],
);

/** The TypeScript name of a constant: a function-like macro's call `F(1)` becomes `F_1`. */
const jsName = (c) => c.replace(/\W+/g, "_").replace(/_$/, "");

// C type for each struct name above (typedefs for the ELF ones).
const cType = (name) => (name.startsWith("Elf64_") ? name : `struct ${name}`);

function words(s) {
  return s.split(/\s+/).filter(Boolean);
}

function cProgram() {
  const lines = [];
  lines.push(`#define _GNU_SOURCE
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/input-event-codes.h>
#include <linux/kvm_para.h>
#include <linux/serial_reg.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_net.h>
#include <linux/virtio_vsock.h>
#include <linux/vm_sockets.h>
#include <linux/virtio_balloon.h>
#include <linux/if_tun.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <net/if_arp.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/openvswitch.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <sys/uio.h>
#include <sys/ioctl.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <linux/seccomp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <sys/prctl.h>
#include <linux/sched.h>
#include <asm/unistd.h>
#include <stdbool.h> /* include/linux/i8042.h uses bool in its stubs */
#include "include/linux/i8042.h"
#include "include/linux/libps2.h" /* its kernel-only includes are shims (makeShims) */
#include <asm/bootparam.h>
#include <asm/processor-flags.h>
#include <asm/mtrr.h>
#include "arch/x86/include/asm/msr-index.h"
#include "arch/x86/include/asm/apicdef.h"
#include "arch/x86/include/asm/mpspec_def.h"
#include "include/xen/interface/elfnote.h"
#include "include/xen/interface/hvm/start_info.h"
#include "acpi.h" /* ACPICA, before e820/types.h: it provides the kernel's u64 */
#include "drivers/acpi/acpica/aclocal.h"
#include "drivers/acpi/acpica/amlcode.h"
#include "drivers/acpi/acpica/amlresrc.h"
#include "arch/x86/include/asm/e820/types.h"
#include "arch/x86/include/asm/hyperv-tlfs.h" /* after acpi.h (kernel types); the rest are shims (makeShims) */
#define OFF(t, f) ((unsigned long long)offsetof(t, f))
int main(void) {`);
  for (const [group, list] of Object.entries(CONSTANTS)) {
    lines.push(`  printf("\\n// %s\\n", ${JSON.stringify(group)});`);
    for (const n of words(list)) {
      lines.push(`  printf("export const ${jsName(n)} = 0x%llx;\\n", (unsigned long long)(${n}));`);
    }
  }
  lines.push(`  printf("\\n// asm/unistd_64.h: x86-64 system call numbers, by name without __NR_\\nexport const SYSCALLS_X86_64 = {\\n");`);
  for (const n of syscallNames()) lines.push(`  printf("  ${n}: %d,\\n", (int)(__NR_${n}));`);
  lines.push(`  printf("} as const;\\n");`);
  lines.push(`  printf("\\n// String constants\\n");`);
  for (const n of words(STRINGS)) {
    lines.push(`  printf("export const ${n} = \\"%s\\";\\n", ${n});`);
  }
  lines.push(`  printf("\\n// Struct layouts: SIZE in bytes, then byte offsets of fields (nested members joined by _)\\n");`);
  for (const [name, fields] of STRUCTS) {
    const t = cType(name);
    lines.push(`  printf("export const ${name} = {\\n  SIZE: %llu,\\n", (unsigned long long)sizeof(${t}));`);
    for (const f of words(fields)) {
      lines.push(`  printf("  ${f.replaceAll(".", "_")}: %llu,\\n", OFF(${t}, ${f}));`);
    }
    lines.push(`  printf("} as const;\\n");`);
  }
  lines.push(`  return 0;\n}`);
  return lines.join("\n");
}

/** Creates include shims so that kernel-internal headers compile in userspace. */
function makeShims(dir, src) {
  mkdirSync(join(dir, "uapi/asm"), { recursive: true });
  symlinkSync(join(src, "include/acpi"), join(dir, "acpi"));
  mkdirSync(join(dir, "linux"), { recursive: true });
  writeFileSync(join(dir, "uapi/asm/bootparam.h"), "#include <asm/bootparam.h>\n");
  writeFileSync(join(dir, "linux/numa.h"), "#define MAX_NUMNODES 1 /* only sizes e820 tables flint does not use */\n");
  // msr-index.h wants the kernel's BIT() helpers from linux/bits.h.
  writeFileSync(join(dir, "linux/bits.h"), [
    "#define BIT(n) (1UL << (n))",
    "#define BIT_ULL(n) (1ULL << (n))",
    "#define GENMASK(h, l) (((~0UL) << (l)) & (~0UL >> (63 - (h))))",
    "#define GENMASK_ULL(h, l) (((~0ULL) << (l)) & (~0ULL >> (63 - (h))))",
    "",
  ].join("\n"));
  // libps2.h declares struct ps2dev with kernel types; flint only reads its #defines.
  writeFileSync(join(dir, "linux/bitops.h"), "#include <linux/bits.h>\ntypedef unsigned char u8;\n");
  writeFileSync(join(dir, "linux/mutex.h"), "struct mutex { int unused; };\n");
  // hyperv-tlfs.h declares structs with kernel types; flint only reads its MSR numbers.
  mkdirSync(join(dir, "asm"), { recursive: true });
  writeFileSync(join(dir, "asm/page.h"), [
    "#define PAGE_SIZE 4096 /* only sizes Hyper-V hypercall structs flint does not use */",
    "#define __packed __attribute__((packed))",
    "#define __aligned(n) __attribute__((aligned(n)))",
    "",
  ].join("\n"));
  writeFileSync(join(dir, "linux/time64.h"), "/* hyperv-tlfs.h: nothing flint reads needs it */\n");
  mkdirSync(join(dir, "asm-generic"), { recursive: true });
  writeFileSync(join(dir, "asm-generic/hyperv-tlfs.h"), "#include \"include/asm-generic/hyperv-tlfs.h\"\n");
  writeFileSync(join(dir, "linux/wait.h"), "#include_next <linux/wait.h>\ntypedef struct { int unused; } wait_queue_head_t;\n");
}

export function generate() {
  const src = kernelSourceFiles(KERNEL_FILES);
  const work = mkdtempSync(join(tmpdir(), "flint-abi-"));
  try {
    makeShims(join(work, "shim"), src);
    writeFileSync(join(work, "abi.c"), cProgram());
    execFileSync("gcc", [
      "-std=gnu11", "-O0", "-w",
      "-I", join(work, "shim"), "-I", src, "-I", join(src, "include/acpi"),
      "-o", join(work, "abi"), join(work, "abi.c"),
    ], { stdio: ["ignore", "inherit", "inherit"] });
    const body = execFileSync(join(work, "abi"), { encoding: "utf8" });
    return `// GENERATED by scripts/gen-abi.mjs from this machine's Linux headers. Do not edit.
// Regenerate with \`npm run gen:abi\`; a test fails when this file and the headers disagree.
/* eslint-disable */
${body}`;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const text = generate();
  if (process.argv.includes("--check")) {
    const old = existsSync(OUT) ? readFileSync(OUT, "utf8") : "";
    if (old !== text) {
      console.error("abi.generated.ts is out of date with the headers: run npm run gen:abi");
      process.exit(1);
    }
    console.log("abi.generated.ts matches the headers");
  } else {
    writeFileSync(OUT, text);
    console.log(`wrote ${OUT}`);
  }
}
