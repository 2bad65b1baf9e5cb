import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { sweepLeftovers } from './test-host.js';

const run = promisify(execFile);

/** vitest global setup: sweep what killed runs left, then build (or reuse) the guest image. */
export default async function setup(): Promise<void> {
  const swept = await sweepLeftovers();
  if (swept.dirs.length > 0) {
    console.log(
      `swept ${swept.dirs.length} leftover test folders, killed ${swept.killed.length} QEMU processes`,
    );
  }
  const root = path.resolve(import.meta.dirname, '../../../..');
  await run('bash', [path.join(root, 'scripts/build-guest-image.sh')], { maxBuffer: 16 * 1024 * 1024 });
}
