/**
 * A writer for the cpio "newc" (SVR4, no CRC) archive format, the format the
 * Linux kernel unpacks as an initramfs (Documentation/driver-api/early-userspace/
 * buffer-format.rst). Each entry is a 110-byte ASCII header, the NUL-terminated
 * name padded to a 4-byte boundary, then the data padded to 4 bytes. The
 * archive ends with an entry named "TRAILER!!!".
 */

/** Magic of a newc header (no checksum). */
export const CPIO_NEWC_MAGIC = "070701";
/** Name of the end-of-archive entry. */
export const CPIO_TRAILER = "TRAILER!!!";

// File type bits of st_mode (linux/stat.h).
/** Directory. */
export const S_IFDIR = 0o040000;
/** Regular file. */
export const S_IFREG = 0o100000;
/** Symbolic link. */
export const S_IFLNK = 0o120000;
/** Character device. */
export const S_IFCHR = 0o020000;
/** Block device. */
export const S_IFBLK = 0o060000;

const NEWC_HEADER_BYTES = 110;

/** Why an archive could not be written. */
export class CpioError extends Error {
  readonly code: "ECPIOENTRY";
  constructor(message: string) {
    super(message);
    this.name = "CpioError";
    this.code = "ECPIOENTRY";
  }
}

/** Fields every entry may carry. `path` is relative to the archive root ("bin/sh"; a leading "/" is dropped). */
interface EntryBase {
  path: string;
  /** Permission bits, 0..0o7777. */
  mode?: number;
  /** Owner (default 0, root). */
  uid?: number;
  /** Group (default 0, root). */
  gid?: number;
}

/** One archive member. */
export type CpioEntry =
  | (EntryBase & { type: "directory" })
  | (EntryBase & { type: "file"; data: Uint8Array | string })
  | (EntryBase & { type: "symlink"; target: string })
  | (EntryBase & { type: "device"; kind: "char" | "block"; major: number; minor: number });

/** Options for {@link writeCpio}. */
export interface CpioOptions {
  /** Modification time of every entry, seconds since the epoch (default 0: reproducible archives). */
  mtimeSec?: number;
}

function normalizePath(path: string): string {
  let name = path.replace(/^\/+/, "").replace(/^(\.\/)+/, "").replace(/\/+$/, "");
  if (name === "") name = ".";
  if (name.split("/").some((part) => part === ".." || part === "")) {
    throw new CpioError(`Cannot add '${path}' to cpio archive: path must not contain '..' or empty components`);
  }
  return name;
}

function hex8(value: number, field: string, path: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new CpioError(`Cannot add '${path}' to cpio archive: ${field} ${value} does not fit in 32 bits`);
  }
  return value.toString(16).padStart(8, "0");
}

function pad4(length: number): number {
  return (4 - (length % 4)) % 4;
}

/** The type bits and default permissions for an entry. */
function modeOf(entry: CpioEntry): number {
  const defaults = { directory: 0o755, file: 0o644, symlink: 0o777, device: 0o600 } as const;
  const permissions = entry.mode ?? defaults[entry.type];
  if (!Number.isInteger(permissions) || permissions < 0 || permissions > 0o7777) {
    throw new CpioError(`Cannot add '${entry.path}' to cpio archive: mode ${permissions} is not in 0..0o7777`);
  }
  switch (entry.type) {
    case "directory":
      return S_IFDIR | permissions;
    case "file":
      return S_IFREG | permissions;
    case "symlink":
      return S_IFLNK | permissions;
    case "device":
      return (entry.kind === "char" ? S_IFCHR : S_IFBLK) | permissions;
  }
}

function record(
  fields: { ino: number; mode: number; uid: number; gid: number; nlink: number; mtime: number; rdevMajor: number; rdevMinor: number },
  name: string,
  data: Uint8Array,
): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, "utf8");
  const header =
    CPIO_NEWC_MAGIC +
    [
      fields.ino,
      fields.mode,
      fields.uid,
      fields.gid,
      fields.nlink,
      fields.mtime,
      data.byteLength, // c_filesize
      0, // c_devmajor: the device holding the file; irrelevant here
      0, // c_devminor
      fields.rdevMajor,
      fields.rdevMinor,
      nameBytes.byteLength, // c_namesize, including the NUL
      0, // c_check: always 0 for 070701
    ]
      .map((value) => hex8(value, "header field", name))
      .join("");
  return [
    Buffer.from(header, "ascii"),
    nameBytes,
    Buffer.alloc(pad4(NEWC_HEADER_BYTES + nameBytes.byteLength)),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength),
    Buffer.alloc(pad4(data.byteLength)),
  ];
}

/**
 * Serializes `entries`, in order, into a newc archive ending with the
 * trailer. Parents are not created implicitly: list directories before their
 * contents. Every entry gets its own inode number, so nothing is a hard link.
 */
export function writeCpio(entries: readonly CpioEntry[], options: CpioOptions = {}): Buffer {
  const mtime = options.mtimeSec ?? 0;
  const parts: Buffer[] = [];
  let ino = 1;
  const seen = new Set<string>();
  for (const entry of entries) {
    const name = normalizePath(entry.path);
    if (seen.has(name)) throw new CpioError(`Cannot add '${entry.path}' to cpio archive: it is already in the archive`);
    seen.add(name);
    let data: Uint8Array = new Uint8Array(0);
    let rdevMajor = 0;
    let rdevMinor = 0;
    if (entry.type === "file") {
      data = typeof entry.data === "string" ? Buffer.from(entry.data, "utf8") : entry.data;
    } else if (entry.type === "symlink") {
      if (entry.target === "") throw new CpioError(`Cannot add '${entry.path}' to cpio archive: empty symlink target`);
      data = Buffer.from(entry.target, "utf8");
    } else if (entry.type === "device") {
      rdevMajor = entry.major;
      rdevMinor = entry.minor;
    }
    parts.push(
      ...record(
        {
          ino: ino++,
          mode: modeOf(entry),
          uid: entry.uid ?? 0,
          gid: entry.gid ?? 0,
          nlink: entry.type === "directory" ? 2 : 1,
          mtime,
          rdevMajor,
          rdevMinor,
        },
        name,
        data,
      ),
    );
  }
  parts.push(...record({ ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, rdevMajor: 0, rdevMinor: 0 }, CPIO_TRAILER, new Uint8Array(0)));
  return Buffer.concat(parts);
}
