/** Defaults shared by CLI commands. */

/** Default kernel command line for a microVM: serial console, reset through the i8042, no PCI. */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
