/**
 * The host side of MMDS's data on running net devices: Machine.setMmdsData
 * turns the API store's JSON into text once and sends it to every net device
 * whose options have `mmds`, as a request on the device thread's control
 * channel (VirtioNet.control, MMDS_REQUEST_SET_DATA), which replaces the
 * device's copy whole. Text, not an object, crosses the thread boundary: its
 * size is checked before it is posted, and the device parses it once.
 */
import type { VirtioDeviceHandle } from "../device-thread.js";
import { MMDS_DATA_MAX_BYTES, MmdsDataError } from "./data.js";

/** The control request that replaces a device's MMDS data: args MmdsSetDataArgs, answer { bytes }. */
export const MMDS_REQUEST_SET_DATA = "mmds-set-data";

/** The arguments of MMDS_REQUEST_SET_DATA. */
export interface MmdsSetDataArgs {
  /** The data as JSON text, at most MMDS_DATA_MAX_BYTES of UTF-8. */
  json: string;
}

/** `value` as JSON text for MMDS_REQUEST_SET_DATA; throws MmdsDataError when it is not JSON or too big. */
export function mmdsDataText(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new MmdsDataError(`Cannot set MMDS data: it cannot be written as JSON (${(e as Error).message})`);
  }
  if (text === undefined) throw new MmdsDataError("Cannot set MMDS data: it cannot be written as JSON");
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MMDS_DATA_MAX_BYTES) throw new MmdsDataError(`Cannot set MMDS data: ${bytes} bytes of JSON exceed the device's limit of ${MMDS_DATA_MAX_BYTES}`);
  return text;
}

/** Sends `value` to each of `devices` (net devices with MMDS on); resolves when all have it. */
export async function setMmdsData(devices: readonly VirtioDeviceHandle[], value: unknown): Promise<void> {
  const args: MmdsSetDataArgs = { json: mmdsDataText(value) };
  await Promise.all(devices.map((d) => d.request(MMDS_REQUEST_SET_DATA, args)));
}
