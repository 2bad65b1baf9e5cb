import { QemuDriver } from '../../src/driver/qemu/qemu-driver.js';
import { eventually, makeSharedDir, makeTestHost, tinySpec } from '../support/test-host.js';
import { describeHypervisorContract } from './hypervisor-contract.js';

describeHypervisorContract('qemu', async () => {
  const shared = await makeSharedDir();
  const a = await makeTestHost({ sharedDir: shared.dir, label: 'a' });
  const b = await makeTestHost({ sharedDir: shared.dir, label: 'b' });
  const drivers: QemuDriver[] = [];
  const open = (host: typeof a) => {
    const d = new QemuDriver({ runtimeDir: host.runtimeDir, pools: host.pools, accelerator: 'tcg' });
    drivers.push(d);
    return d;
  };
  return {
    driver: open(a),
    peer: open(b),
    reopen: async () => open(a),
    spec: (id, pool) => tinySpec(id, pool ? { pool } : {}),
    waitReady: async (driver, id) => {
      await eventually(
        async () => ((await driver.consoleLog(id)).includes('HANGAR-READY') ? true : undefined),
        {
          timeoutMs: 60_000,
          what: `${id} to print HANGAR-READY`,
        },
      );
    },
    listenHost: '127.0.0.1',
    cleanup: async () => {
      for (const d of drivers) await d.close();
      await a.cleanup();
      await b.cleanup();
      await shared.cleanup();
    },
  };
});
