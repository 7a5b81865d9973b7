/** Turning errors into one line for the user, and deciding their exit code. */

/** Error classes whose every instance is caused by the user's input or host setup (exit code 2). */
const USER_ERROR_NAMES = new Set(["MachineError", "BootError", "InitramfsError", "CpioError", "DeviceArgError", "ConfigError", "FlagError", "VmError", "LoggerError", "MetricsError", "SnapshotError", "JailError"]);
/** Codes of other error classes that are the user's to fix. */
const USER_ERROR_CODES = new Set(["ENOKVM", "EKVMACCESS", "EKVMVERSION", "EKVMCAP", "EKERNELSOURCE"]);

/** True for bad input or an unusable host, as opposed to a flint or guest failure. */
export function isUserError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  return USER_ERROR_NAMES.has(e.name) || (typeof code === "string" && USER_ERROR_CODES.has(code));
}

/** One line describing `e`. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return e.message.split("\n")[0]!;
  return String(e);
}
