import { access } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { isVmmError, VmmError } from '../errors.js';
import { runCommand } from '../util/exec.js';

/** Image formats vmm-core creates and attaches. */
export type ImageFormat = 'qcow2' | 'raw';

/** One internal snapshot of a qcow2 image. */
export interface SnapshotInfo {
  /** qcow2's own numeric id, as a string. */
  id: string;
  name: string;
  /** Size of saved VM state (0 for disk-only snapshots taken by qemu-img). */
  vmStateSizeBytes: number;
  /** Creation time, seconds since the epoch. */
  dateSec: number;
  dateNsec: number;
  /** Guest clock when the snapshot was taken. */
  vmClockSec: number;
  vmClockNsec: number;
}

/** What `qemu-img info` reports about one image (one element of a backing chain). */
export interface ImageInfo {
  filename: string;
  /** The format qemu-img detected, e.g. `qcow2` or `raw`. */
  format: string;
  virtualSizeBytes: number;
  /** Bytes allocated on the host; absent for some protocols. */
  actualSizeBytes: number | undefined;
  clusterSizeBytes: number | undefined;
  /** The backing file name as recorded in the image. */
  backingFile: string | undefined;
  /** The backing file resolved to a full path. */
  fullBackingFile: string | undefined;
  backingFormat: string | undefined;
  snapshots: SnapshotInfo[];
  /** qcow2: the image was not closed cleanly (lazy refcounts) and needs a check. */
  dirty: boolean | undefined;
  /** qcow2: the image is marked corrupt. */
  corrupt: boolean | undefined;
}

/** Options of {@link createImage}. */
export interface CreateImageOptions {
  format: ImageFormat;
  sizeBytes: number;
}

/** Options of {@link createOverlay}. */
export interface CreateOverlayOptions {
  /** Absolute path of the base image; qemu resolves relative ones against the overlay's folder. */
  backingFile: string;
  backingFormat: ImageFormat;
  /** Virtual size of the overlay; defaults to the base's. May not be smaller than the base. */
  sizeBytes?: number;
}

/** Options of {@link imageInfo} and {@link imageChain}. */
export interface ImageInfoOptions {
  /** Pass `-U` so the image can be read while a running QEMU holds its lock. */
  forceShare?: boolean;
  /**
   * The format the caller knows the image has. Give it for raw images written by guests: probing
   * would believe a guest that wrote a qcow2 header (and a backing file name) into its disk.
   */
  format?: ImageFormat;
}

/** Options of {@link resizeImage}. */
export interface ResizeImageOptions {
  /** Allow a smaller size; data past the new end is lost. */
  shrink?: boolean;
  /** The image's format; probed when absent (see {@link ImageInfoOptions.format}). */
  format?: ImageFormat;
}

/** Options of {@link convertImage}. */
export interface ConvertImageOptions {
  outFormat: ImageFormat;
  /** Format of `src`; detected when absent. */
  srcFormat?: ImageFormat;
}

/** Internal snapshot names: a letter or digit first, then letters, digits, `.`, `_`, `-`. */
export const SNAPSHOT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Milliseconds each qemu-img command may take (Incus keeps a per-command table the same way). */
const TIMEOUT_MS = {
  info: 30_000,
  create: 60_000,
  resize: 60_000,
  snapshot: 120_000,
  // Copies whole images: bounded only to catch a hung process.
  convert: 6 * 60 * 60_000,
} as const;

const QEMU_IMG = 'qemu-img';

const SnapshotJson = z.object({
  id: z.string(),
  name: z.string(),
  'vm-state-size': z.number(),
  'date-sec': z.number(),
  'date-nsec': z.number(),
  'vm-clock-sec': z.number(),
  'vm-clock-nsec': z.number(),
});

const ImageInfoJson = z.object({
  filename: z.string(),
  format: z.string(),
  'virtual-size': z.number(),
  'actual-size': z.number().optional(),
  'cluster-size': z.number().optional(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  snapshots: z.array(SnapshotJson).optional(),
  'dirty-flag': z.boolean().optional(),
  'format-specific': z
    .object({ type: z.string(), data: z.object({ corrupt: z.boolean().optional() }).loose().optional() })
    .loose()
    .optional(),
});

/**
 * Creates an empty image. Refuses to replace an existing file (qemu-img would truncate it).
 *
 * @throws VmmError `INVALID_SPEC` for a size that is not a positive integer; `DISK_ERROR` when the
 *   file exists or qemu-img fails.
 */
export async function createImage(path: string, options: CreateImageOptions): Promise<void> {
  assertFormat(options.format);
  assertSize(options.sizeBytes);
  await assertAbsent(path);
  await qemuImg(
    ['create', '-q', '-f', options.format, path, String(options.sizeBytes)],
    TIMEOUT_MS.create,
    path,
  );
}

/**
 * Creates a qcow2 overlay whose reads fall through to `backingFile` until the guest writes.
 *
 * @throws VmmError `INVALID_SPEC` for a relative backing path or a bad size; `DISK_ERROR` when the
 *   overlay exists, the base is missing or qemu-img fails.
 */
export async function createOverlay(path: string, options: CreateOverlayOptions): Promise<void> {
  if (!isAbsolute(options.backingFile)) {
    throw new VmmError(
      'INVALID_SPEC',
      `backing file must be an absolute path, got '${options.backingFile}'`,
      {
        details: { path, backingFile: options.backingFile },
      },
    );
  }
  assertFormat(options.backingFormat);
  if (options.sizeBytes !== undefined) assertSize(options.sizeBytes);
  await assertAbsent(path);
  const args = ['create', '-q', '-f', 'qcow2', '-b', options.backingFile, '-F', options.backingFormat, path];
  if (options.sizeBytes !== undefined) args.push(String(options.sizeBytes));
  await qemuImg(args, TIMEOUT_MS.create, path);
}

/**
 * Reads an image's metadata with `qemu-img info --output=json`.
 *
 * @throws VmmError `DISK_ERROR` when the file is missing, locked by a running QEMU (without
 *   `forceShare`) or not an image qemu-img can open.
 */
export async function imageInfo(path: string, options: ImageInfoOptions = {}): Promise<ImageInfo> {
  const stdout = await qemuImg([...infoArgs(options), path], TIMEOUT_MS.info, path);
  return toImageInfo(parseJson(stdout, ImageInfoJson, path));
}

/**
 * The backing chain of an image: the image itself first, then its base, its base's base, ...
 *
 * @throws VmmError `DISK_ERROR` as {@link imageInfo}, also when any image of the chain is missing.
 */
export async function imageChain(path: string, options: ImageInfoOptions = {}): Promise<ImageInfo[]> {
  const stdout = await qemuImg([...infoArgs(options), '--backing-chain', path], TIMEOUT_MS.info, path);
  return parseJson(stdout, z.array(ImageInfoJson), path).map(toImageInfo);
}

/**
 * Changes an image's virtual size. Growing is always allowed; shrinking only with `shrink: true`.
 * Resizing to the current size does nothing.
 *
 * @throws VmmError `INVALID_SPEC` for a size that is not a positive integer or a refused shrink;
 *   `DISK_ERROR` when qemu-img fails (e.g. a qcow2 with internal snapshots, or the image is in use).
 */
export async function resizeImage(
  path: string,
  newSizeBytes: number,
  options: ResizeImageOptions = {},
): Promise<void> {
  assertSize(newSizeBytes);
  if (options.format !== undefined) assertFormat(options.format);
  const info = await imageInfo(path, { format: options.format });
  if (newSizeBytes === info.virtualSizeBytes) return;
  const shrinking = newSizeBytes < info.virtualSizeBytes;
  if (shrinking && options.shrink !== true) {
    throw new VmmError(
      'INVALID_SPEC',
      `refusing to shrink ${path} from ${info.virtualSizeBytes} to ${newSizeBytes} bytes without shrink: true`,
      { details: { path, currentSizeBytes: info.virtualSizeBytes, newSizeBytes } },
    );
  }
  const args = ['resize', '-q', '-f', info.format];
  if (shrinking) args.push('--shrink');
  args.push(path, String(newSizeBytes));
  await qemuImg(args, TIMEOUT_MS.resize, path);
}

/**
 * Takes an internal (disk-only) snapshot of a qcow2 image. The VM must be stopped: qemu-img
 * cannot take the image's write lock otherwise and fails.
 *
 * @throws VmmError `INVALID_SPEC` for a bad name; `DISK_ERROR` when the name is taken, the image is
 *   raw, in use or missing.
 */
export async function createSnapshot(path: string, name: string): Promise<void> {
  assertSnapshotName(name);
  const existing = await qcow2Snapshots(path);
  // qcow2 happily stores two snapshots with the same name; later lookups would then be ambiguous.
  if (existing.some((s) => s.name === name)) {
    throw new VmmError('DISK_ERROR', `snapshot '${name}' already exists in ${path}`, {
      details: { path, name },
    });
  }
  await qemuImg(['snapshot', '-c', name, path], TIMEOUT_MS.snapshot, path);
}

/**
 * Lists the internal snapshots of an image (empty for raw images).
 *
 * @throws VmmError `DISK_ERROR` when the image cannot be opened.
 */
export async function listSnapshots(path: string, options: ImageInfoOptions = {}): Promise<SnapshotInfo[]> {
  return (await imageInfo(path, options)).snapshots;
}

/**
 * Restores the image's content to the named internal snapshot. The VM must be stopped.
 *
 * @throws VmmError `INVALID_SPEC` for a bad name; `DISK_ERROR` when no snapshot has that name or
 *   qemu-img fails.
 */
export async function revertSnapshot(path: string, name: string): Promise<void> {
  await assertSnapshotExists(path, name);
  await qemuImg(['snapshot', '-a', name, path], TIMEOUT_MS.snapshot, path);
}

/**
 * Deletes the named internal snapshot. The VM must be stopped.
 *
 * @throws VmmError `INVALID_SPEC` for a bad name; `DISK_ERROR` when no snapshot has that name or
 *   qemu-img fails.
 */
export async function deleteSnapshot(path: string, name: string): Promise<void> {
  await assertSnapshotExists(path, name);
  await qemuImg(['snapshot', '-d', name, path], TIMEOUT_MS.snapshot, path);
}

/**
 * Copies `src` (with everything it reads through its backing chain) into a new standalone image.
 * Refuses to replace an existing `dst`.
 *
 * @throws VmmError `DISK_ERROR` when `dst` exists, `src` cannot be read or qemu-img fails.
 */
export async function convertImage(src: string, dst: string, options: ConvertImageOptions): Promise<void> {
  assertFormat(options.outFormat);
  if (options.srcFormat !== undefined) assertFormat(options.srcFormat);
  await assertAbsent(dst);
  const args = ['convert', '-q', '-O', options.outFormat];
  if (options.srcFormat !== undefined) args.push('-f', options.srcFormat);
  args.push(src, dst);
  await qemuImg(args, TIMEOUT_MS.convert, src);
}

/**
 * Checks a snapshot name against {@link SNAPSHOT_NAME_PATTERN}. Names of digits only are refused
 * too: qemu-img looks snapshots up by id *or* name, so `2` could select another snapshot whose id is 2.
 *
 * @throws VmmError `INVALID_SPEC`
 */
export function assertSnapshotName(name: string): void {
  if (!SNAPSHOT_NAME_PATTERN.test(name)) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid snapshot name '${name}': use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      { details: { name } },
    );
  }
  if (/^[0-9]+$/.test(name)) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid snapshot name '${name}': digits only would clash with snapshot ids`,
      {
        details: { name },
      },
    );
  }
}

/** Snapshots of a qcow2 image; other formats have none and cannot take any. */
async function qcow2Snapshots(path: string): Promise<SnapshotInfo[]> {
  const info = await imageInfo(path);
  if (info.format !== 'qcow2') {
    throw new VmmError('DISK_ERROR', `internal snapshots need a qcow2 image; ${path} is ${info.format}`, {
      details: { path, format: info.format },
    });
  }
  return info.snapshots;
}

async function assertSnapshotExists(path: string, name: string): Promise<void> {
  assertSnapshotName(name);
  const snapshots = await qcow2Snapshots(path);
  if (!snapshots.some((s) => s.name === name)) {
    throw new VmmError('DISK_ERROR', `snapshot '${name}' does not exist in ${path}`, {
      details: { path, name, snapshots: snapshots.map((s) => s.name) },
    });
  }
}

function infoArgs(options: ImageInfoOptions): string[] {
  const args = ['info', '--output=json'];
  if (options.forceShare === true) args.push('-U');
  if (options.format !== undefined) {
    assertFormat(options.format);
    args.push('-f', options.format);
  }
  return args;
}

function assertSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new VmmError(
      'INVALID_SPEC',
      `image size must be a positive integer number of bytes, got ${sizeBytes}`,
      {
        details: { sizeBytes },
      },
    );
  }
}

function assertFormat(format: string): void {
  if (format !== 'qcow2' && format !== 'raw') {
    throw new VmmError('INVALID_SPEC', `unsupported image format '${format}' (qcow2 or raw)`, {
      details: { format },
    });
  }
}

async function assertAbsent(path: string): Promise<void> {
  const exists = await access(path).then(
    () => true,
    () => false,
  );
  if (exists) {
    throw new VmmError('DISK_ERROR', `${path} already exists; refusing to overwrite it`, {
      details: { path },
    });
  }
}

/** Runs qemu-img and turns its failures into `DISK_ERROR` carrying qemu-img's own message. */
async function qemuImg(args: string[], timeoutMs: number, path: string): Promise<string> {
  try {
    const { stdout } = await runCommand(QEMU_IMG, args, { timeoutMs, env: { LC_ALL: 'C' } });
    return stdout;
  } catch (err) {
    if (isVmmError(err, 'COMMAND_FAILED')) {
      const stderr = typeof err.details?.stderr === 'string' ? err.details.stderr : '';
      const reason = stderr === '' ? err.message : stderr.replace(/^qemu-img: /gm, '');
      throw new VmmError('DISK_ERROR', `qemu-img ${args[0]} failed for ${path}: ${reason}`, {
        cause: err,
        details: { path, args, stderr },
      });
    }
    throw err;
  }
}

function parseJson<T>(stdout: string, schema: z.ZodType<T>, path: string): T {
  let value: unknown;
  try {
    value = JSON.parse(stdout);
  } catch (err) {
    throw new VmmError('DISK_ERROR', `qemu-img info printed invalid JSON for ${path}`, { cause: err });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new VmmError('DISK_ERROR', `unexpected qemu-img info output for ${path}: ${parsed.error.message}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}

function toImageInfo(json: z.infer<typeof ImageInfoJson>): ImageInfo {
  return {
    filename: json.filename,
    format: json.format,
    virtualSizeBytes: json['virtual-size'],
    actualSizeBytes: json['actual-size'],
    clusterSizeBytes: json['cluster-size'],
    backingFile: json['backing-filename'],
    fullBackingFile: json['full-backing-filename'],
    backingFormat: json['backing-filename-format'],
    snapshots: (json.snapshots ?? []).map((s) => ({
      id: s.id,
      name: s.name,
      vmStateSizeBytes: s['vm-state-size'],
      dateSec: s['date-sec'],
      dateNsec: s['date-nsec'],
      vmClockSec: s['vm-clock-sec'],
      vmClockNsec: s['vm-clock-nsec'],
    })),
    dirty: json['dirty-flag'],
    corrupt: json['format-specific']?.data?.corrupt,
  };
}
