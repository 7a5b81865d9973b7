/** Defaults shared by CLI commands. */

/**
 * Default kernel command line for a microVM: serial console, reset through the
 * i8042, no PCI. No `i8042.nopnp`: on flint's hardware-reduced ACPI platform
 * the i8042 driver gets its IRQ only from the DSDT's PNP0303 device.
 */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
