import os from 'node:os';
import { FakeDriver, FakeFabric, FakeHost } from '../../src/driver/fake/fake-driver.js';
import { tinySpec } from '../support/test-host.js';
import { describeHypervisorContract } from './hypervisor-contract.js';

const pools = {
  images: { path: '/nonexistent/images', shared: true },
  local: { path: '/nonexistent/local', shared: false },
  shared: { path: '/nonexistent/shared', shared: true },
};

describeHypervisorContract('fake', async () => {
  const fabric = new FakeFabric();
  const hostA = new FakeHost();
  const runtimeDir = `${os.tmpdir()}/hangar-fake-a`;
  return {
    driver: new FakeDriver({ runtimeDir, pools, host: hostA, fabric }),
    peer: new FakeDriver({ runtimeDir: `${os.tmpdir()}/hangar-fake-b`, pools, fabric }),
    reopen: async () => new FakeDriver({ runtimeDir, pools, host: hostA, fabric }),
    spec: (id, pool) => tinySpec(id, pool ? { pool } : {}),
    waitReady: async () => undefined,
    listenHost: '127.0.0.1',
    cleanup: async () => undefined,
  };
});
