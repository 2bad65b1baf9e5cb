// Boots one demo guest through vmm-core, prints its marker and status, then stops it cleanly.
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { QemuDriver } from '@hangar/vmm-core';

const dataDir = process.env.HANGAR_DATA_DIR ?? path.resolve(import.meta.dirname, '..', '.data');
const imageDir = path.join(dataDir, 'images', 'hangar-tiny');
const image = JSON.parse(await readFile(path.join(imageDir, 'image.json'), 'utf8'));
const runtimeDir = path.join(dataDir, 'demo', 'run');
const poolDir = path.join(dataDir, 'demo', 'pool');
await mkdir(runtimeDir, { recursive: true });
await mkdir(poolDir, { recursive: true });

const driver = new QemuDriver({
  runtimeDir,
  pools: { images: { path: imageDir, shared: false }, local: { path: poolDir, shared: false } },
});
const caps = await driver.capabilities();
console.log(`host: QEMU ${caps.qemuVersion}, accelerator ${caps.accelerator} (${caps.acceleratorReason})`);

const id = 'demo';
// A previous demo that was interrupted may have left its VM: take it over, never duplicate it.
const existing = (await driver.list()).find((v) => v.id === id);
if (existing) {
  if (existing.state !== 'STOPPED') await driver.forceStop(id);
  await driver.delete(id);
}
await rm(path.join(poolDir, id), { recursive: true, force: true });

await driver.create({
  id,
  name: 'hangar-demo',
  vcpus: 1,
  memoryMiB: 256,
  cpuModel: caps.defaultCpuModel,
  boot: {
    type: 'kernel',
    kernel: { pool: 'images', path: image.kernel },
    initrd: { pool: 'images', path: image.initrd },
    cmdline: image.cmdline,
  },
  disks: [
    {
      name: 'data',
      file: { pool: 'local', path: `${id}/data.qcow2` },
      backing: { pool: 'images', path: image.baseDisk, format: 'qcow2' },
    },
  ],
  cloudInit: { hostname: 'hangar-demo', userData: '#!/bin/sh\necho "hello from user-data on $(hostname)"\n' },
});
const started = Date.now();
const vm = await driver.start(id);
console.log(`started VM ${id} (QEMU pid ${vm.pid}); waiting for the guest...`);

let marker;
while (!marker) {
  if (Date.now() - started > 120_000) throw new Error('guest did not print its marker within 120 s');
  const log = await driver.consoleLog(id);
  marker = log.split('\n').find((l) => l.startsWith(image.marker));
  if (!marker) await new Promise((r) => setTimeout(r, 100));
}
console.log(`guest: ${marker.trim()}  (${Date.now() - started} ms after start)`);
const info = await driver.get(id);
console.log(`status: ${info.state} (QEMU says "${info.qemuStatus}")`);

const stopped = await driver.stop(id, { timeoutMs: 30_000 });
console.log(`stopped cleanly by ACPI powerdown: status ${stopped.state}`);
await driver.delete(id);
await driver.close();
