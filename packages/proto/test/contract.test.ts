import { execFile } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  type Client,
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { DiskCacheModeSchema, DiskSpecSchema, NicSpecSchema } from '../../vmm-core/src/spec/vm-spec.js';
import { VM_STATES } from '../../vmm-core/src/state/vm-state.js';
import { agentv1, controlv1, PROTOCOL_VERSION } from '../src/index.js';

const execFileAsync = promisify(execFile);
/** Runs the workspace's buf (`npx --no`: never fetches anything from the registry). */
const buf = (args: string[]) => execFileAsync('npx', ['--no', 'buf', ...args], { cwd: pkgDir });
const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');

const { VmState, DiskFormat, DiskCacheMode, NicModel } = agentv1;

/** Every field of every message in the spec tree is set to a non-default value. */
const fullSpec: agentv1.VmSpec = {
  id: 'vm-0123abcd',
  name: 'web-1.example',
  vcpus: 4,
  memoryMib: 2048,
  machineType: 'pc-q35-8.2',
  cpuModel: 'Skylake-Server-v4',
  boot: {
    $case: 'kernel',
    value: {
      kernel: { pool: 'images', path: 'kernels/vmlinuz-6.1' },
      initrd: { pool: 'images', path: 'kernels/initrd.img-6.1' },
      cmdline: 'console=ttyS0 root=/dev/vda rw quiet',
    },
  },
  disks: [
    {
      name: 'root',
      file: { pool: 'shared', path: 'vms/vm-0123abcd/root.qcow2' },
      format: DiskFormat.DISK_FORMAT_QCOW2,
      backing: { pool: 'images', path: 'base/debian-12.raw', format: DiskFormat.DISK_FORMAT_RAW },
      sizeBytes: 2 ** 50,
      cache: DiskCacheMode.DISK_CACHE_MODE_WRITEBACK,
      readOnly: true,
      bootIndex: 3,
    },
    {
      name: 'scratch',
      file: { pool: 'local', path: 'vms/vm-0123abcd/scratch.raw' },
      format: DiskFormat.DISK_FORMAT_RAW,
      backing: undefined,
      sizeBytes: 10 * 2 ** 30,
      cache: DiskCacheMode.DISK_CACHE_MODE_UNSAFE,
      readOnly: false,
      bootIndex: undefined,
    },
  ],
  nics: [
    {
      name: 'eth0',
      mac: '52:54:00:12:34:56',
      backend: { $case: 'tap', value: { ifname: 'hg-tap0123' } },
      model: NicModel.NIC_MODEL_E1000,
    },
    {
      name: 'eth1',
      mac: '52:54:00:ab:cd:ef',
      backend: { $case: 'user', value: {} },
      model: NicModel.NIC_MODEL_VIRTIO_NET_PCI,
    },
  ],
  cloudInit: {
    hostname: 'web-1.example.org',
    instanceId: 'i-0123abcd',
    userData: '#cloud-config\npackages: [nginx]\n# ünïcödé ✓\n',
    networkConfig: 'version: 2\nethernets:\n  eth0: {dhcp4: true}\n',
  },
  debugShell: true,
};

const diskBootSpec: agentv1.VmSpec = {
  ...fullSpec,
  id: 'vm-disk-boot',
  boot: { $case: 'disk', value: {} },
  cloudInit: undefined,
};

/** Keys of `created` (all fields of a message, at their defaults) that `value` leaves at the default. */
function defaultedFields(created: object, value: object): string[] {
  return Object.entries(created)
    .filter(([k, d]) => {
      const v = (value as Record<string, unknown>)[k];
      return v === undefined || v === d || (Array.isArray(v) && v.length === 0);
    })
    .map(([k]) => k);
}

// --- tiny gRPC harness -------------------------------------------------------------------

let server: Server | undefined;
let clients: Client[] = [];

async function listen(setup: (s: Server) => void): Promise<string> {
  server = new Server();
  setup(server);
  const port = await new Promise<number>((resolve, reject) =>
    server!.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return `127.0.0.1:${port}`;
}

function agentClient(address: string): agentv1.HostAgentClient {
  const c = new agentv1.HostAgentClient(address, credentials.createInsecure());
  clients.push(c);
  return c;
}

function gatewayClient(address: string): controlv1.AgentGatewayClient {
  const c = new controlv1.AgentGatewayClient(address, credentials.createInsecure());
  clients.push(c);
  return c;
}

/** Promisifies one unary call of a generated client. */
function unary<Res>(invoke: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => invoke((err, res) => (err ? reject(err) : resolve(res))));
}

afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  const s = server;
  server = undefined;
  if (s) {
    await new Promise<void>((resolve) => {
      s.tryShutdown(() => resolve());
      setTimeout(() => {
        s.forceShutdown();
        resolve();
      }, 2000).unref();
    });
  }
});

// --- tests -------------------------------------------------------------------------------

describe('contract mirrors vmm-core', () => {
  it('has one VmState per vmm-core state, plus UNSPECIFIED = 0', () => {
    expect(VmState.VM_STATE_UNSPECIFIED).toBe(0);
    for (const s of VM_STATES)
      expect(VmState[`VM_STATE_${s}` as keyof typeof VmState], s).toBeTypeOf('number');
    const protoStates = Object.keys(VmState).filter(
      (k) => k.startsWith('VM_STATE_') && k !== 'VM_STATE_UNSPECIFIED',
    );
    expect(protoStates.map((k) => k.slice('VM_STATE_'.length)).sort()).toEqual([...VM_STATES].sort());
  });

  it('has an enum value for every disk format, cache mode and NIC model', () => {
    const enumNames = (e: object, prefix: string) =>
      Object.keys(e)
        .filter((k) => k.startsWith(prefix) && !k.endsWith('_UNSPECIFIED'))
        .map((k) => k.slice(prefix.length).toLowerCase().replaceAll('_', '-'))
        .sort();
    expect(enumNames(DiskCacheMode, 'DISK_CACHE_MODE_')).toEqual([...DiskCacheModeSchema.options].sort());
    expect(enumNames(DiskFormat, 'DISK_FORMAT_')).toEqual(
      [...DiskSpecSchema.shape.format.unwrap().options].sort(),
    );
    expect(enumNames(NicModel, 'NIC_MODEL_')).toEqual([...NicSpecSchema.shape.model.unwrap().options].sort());
  });

  it('the full-spec fixture sets every field of every spec message', () => {
    const disk0 = fullSpec.disks[0]!;
    const boot = fullSpec.boot?.$case === 'kernel' ? fullSpec.boot.value : undefined;
    expect(defaultedFields(agentv1.VmSpec.create(), fullSpec)).toEqual([]);
    expect(defaultedFields(agentv1.DiskSpec.create(), disk0)).toEqual([]);
    expect(defaultedFields(agentv1.BackingFile.create(), disk0.backing!)).toEqual([]);
    expect(defaultedFields(agentv1.PoolPath.create(), disk0.file!)).toEqual([]);
    expect(defaultedFields(agentv1.NicSpec.create(), fullSpec.nics[0]!)).toEqual([]);
    expect(defaultedFields(agentv1.TapBackend.create(), { ifname: 'x' })).toEqual([]);
    expect(defaultedFields(agentv1.CloudInitSpec.create(), fullSpec.cloudInit!)).toEqual([]);
    expect(defaultedFields(agentv1.KernelBoot.create(), boot!)).toEqual([]);
  });

  it('exports protocol version 1', () => {
    expect(PROTOCOL_VERSION).toBe(1);
  });
});

describe('HostAgent over real grpc-js', () => {
  it('CreateVm round-trips a full VmSpec (every field survives) and GetVm a disk-boot spec', async () => {
    const received: agentv1.CreateVmRequest[] = [];
    const impl: Partial<agentv1.HostAgentServer> = {
      createVm: (call, callback) => {
        received.push(call.request);
        const spec = call.request.spec!;
        callback(null, {
          vm: {
            id: spec.id,
            name: spec.name,
            state: VmState.VM_STATE_STOPPED,
            qemuStatus: undefined,
            pid: undefined,
            spec,
          },
        });
      },
      getVm: (call, callback) => {
        callback(null, {
          vm: {
            id: call.request.vmId,
            name: diskBootSpec.name,
            state: VmState.VM_STATE_RUNNING,
            qemuStatus: 'running',
            pid: 4242,
            spec: diskBootSpec,
          },
        });
      },
    };
    const address = await listen((s) =>
      s.addService(agentv1.HostAgentService, impl as agentv1.HostAgentServer),
    );
    const client = agentClient(address);

    const res = await unary<agentv1.CreateVmResponse>((cb) =>
      client.createVm({ operationId: 'op-1', spec: fullSpec }, cb),
    );
    expect(received).toEqual([{ operationId: 'op-1', spec: fullSpec }]);
    expect(res.vm?.spec).toEqual(fullSpec);
    expect(res.vm?.state).toBe(VmState.VM_STATE_STOPPED);
    expect(res.vm?.pid).toBeUndefined();
    expect(res.vm?.spec?.disks[0]?.sizeBytes).toBe(2 ** 50);

    const got = await unary<agentv1.GetVmResponse>((cb) => client.getVm({ vmId: 'vm-disk-boot' }, cb));
    expect(got.vm).toEqual({
      id: 'vm-disk-boot',
      name: diskBootSpec.name,
      state: VmState.VM_STATE_RUNNING,
      qemuStatus: 'running',
      pid: 4242,
      spec: diskBootSpec,
    });
    expect(got.vm?.spec?.boot?.$case).toBe('disk');
    expect(got.vm?.spec?.cloudInit).toBeUndefined();
  });

  it('an INVALID_ARGUMENT status reaches the client with its message and error code', async () => {
    const message = 'invalid VM spec: vcpus: Too small: expected number to be >=1';
    const impl: Partial<agentv1.HostAgentServer> = {
      createVm: (call, callback) => {
        if (call.request.spec?.vcpus === 0) {
          const metadata = new Metadata();
          metadata.set('hangar-error-code', 'INVALID_SPEC');
          callback({ code: status.INVALID_ARGUMENT, details: message, metadata });
          return;
        }
        callback(null, { vm: undefined });
      },
    };
    const address = await listen((s) =>
      s.addService(agentv1.HostAgentService, impl as agentv1.HostAgentServer),
    );
    const client = agentClient(address);

    const err = await unary<agentv1.CreateVmResponse>((cb) =>
      client.createVm({ operationId: 'op-2', spec: { ...fullSpec, vcpus: 0 } }, cb),
    ).then(
      () => undefined,
      (e: ServiceError) => e,
    );
    expect(err).toBeDefined();
    expect(err?.code).toBe(status.INVALID_ARGUMENT);
    expect(err?.details).toBe(message);
    expect(err?.metadata.get('hangar-error-code')).toEqual(['INVALID_SPEC']);

    // An RPC the server does not implement is UNIMPLEMENTED, not a hang.
    const missing = await unary<agentv1.StartVmResponse>((cb) =>
      client.startVm({ vmId: 'x', operationId: 'op-3' }, cb),
    ).then(
      () => undefined,
      (e: ServiceError) => e,
    );
    expect(missing?.code).toBe(status.UNIMPLEMENTED);
  });

  it('Migrate streams several progress messages, then the final result', async () => {
    let request: agentv1.MigrateRequest | undefined;
    const impl: Partial<agentv1.HostAgentServer> = {
      migrate: (call) => {
        request = call.request;
        const total = 1024 * 1024 * 1024;
        for (let i = 1; i <= 3; i++) {
          call.write({
            update: {
              $case: 'progress',
              value: {
                status: 'active',
                transferredBytes: (total / 4) * i,
                remainingBytes: total - (total / 4) * i,
                totalBytes: total,
                dirtyPagesRate: 1234.5,
                expectedDowntimeMs: i === 3 ? 42 : undefined,
                cpuThrottlePercent: i === 3 ? 20 : undefined,
                percent: 25 * i,
                elapsedMs: 100 * i,
              },
            },
          });
        }
        call.write({
          update: {
            $case: 'result',
            value: { downtimeMs: 37, totalMs: 412, transferredBytes: total + 4096, setupMs: 12 },
          },
        });
        call.end();
      },
    };
    const address = await listen((s) =>
      s.addService(agentv1.HostAgentService, impl as agentv1.HostAgentServer),
    );
    const client = agentClient(address);

    const options: agentv1.MigrateOptions = {
      downtimeLimitMs: 300,
      maxBandwidth: 125_000_000,
      autoConverge: true,
      completionTimeoutMs: 120_000,
      stallTimeoutMs: 30_000,
      progressIntervalMs: 250,
    };
    const messages: agentv1.MigrateResponse[] = [];
    for await (const m of client.migrate({
      vmId: 'vm-1',
      operationId: 'op-m',
      uri: 'tcp:127.0.0.1:4444',
      options,
    })) {
      messages.push(m as agentv1.MigrateResponse);
    }
    expect(request).toEqual({ vmId: 'vm-1', operationId: 'op-m', uri: 'tcp:127.0.0.1:4444', options });
    expect(messages).toHaveLength(4);
    expect(messages.slice(0, 3).map((m) => m.update?.$case)).toEqual(['progress', 'progress', 'progress']);
    const percents = messages.map((m) =>
      m.update?.$case === 'progress' ? m.update.value.percent : undefined,
    );
    expect(percents).toEqual([25, 50, 75, undefined]);
    const third = messages[2]?.update;
    expect(third?.$case === 'progress' && third.value.expectedDowntimeMs).toBe(42);
    expect(messages[3]?.update).toEqual({
      $case: 'result',
      value: { downtimeMs: 37, totalMs: 412, transferredBytes: 1024 * 1024 * 1024 + 4096, setupMs: 12 },
    });
  });

  it('a failed Migrate ends the stream with ABORTED after the progress it sent', async () => {
    const impl: Partial<agentv1.HostAgentServer> = {
      migrate: (call) => {
        call.write({
          update: { $case: 'progress', value: { ...agentv1.MigrationProgress.create(), status: 'active' } },
        });
        call.emit('error', { code: status.ABORTED, details: 'migration failed: Unable to write to socket' });
      },
    };
    const address = await listen((s) =>
      s.addService(agentv1.HostAgentService, impl as agentv1.HostAgentServer),
    );
    const client = agentClient(address);
    const seen: unknown[] = [];
    const err = await (async () => {
      for await (const m of client.migrate({
        vmId: 'vm-1',
        operationId: 'op-f',
        uri: 'tcp:x:1',
        options: undefined,
      })) {
        seen.push(m);
      }
    })().then(
      () => undefined,
      (e: ServiceError) => e,
    );
    expect(seen).toHaveLength(1);
    expect(err?.code).toBe(status.ABORTED);
    expect(err?.details).toBe('migration failed: Unable to write to socket');
  });
});

describe('AgentGateway over real grpc-js', () => {
  it('Register carries the full HostInfo', async () => {
    const host: controlv1.HostInfo = {
      hostname: 'node-1',
      agentAddress: '10.0.0.1:7443',
      cores: 16,
      memoryBytes: 64 * 2 ** 30,
      driver: controlv1.HypervisorDriver.HYPERVISOR_DRIVER_QEMU,
      accelerator: controlv1.Accelerator.ACCELERATOR_KVM,
      acceleratorReason: '/dev/kvm is usable',
      qemuVersion: '7.2.19',
      machineTypes: ['pc', 'pc-i440fx-7.2', 'q35'],
      defaultMachineType: 'pc',
      cpuModels: ['qemu64', 'Skylake-Server'],
      defaultCpuModel: 'qemu64',
      pools: [
        { name: 'shared', path: '/srv/hangar/shared', shared: true, totalBytes: 2 ** 42, freeBytes: 2 ** 41 },
        {
          name: 'local',
          path: '/var/lib/hangar/local',
          shared: false,
          totalBytes: 2 ** 38,
          freeBytes: 12345,
        },
      ],
      features: {
        liveMigration: true,
        saveRestore: true,
        diskHotplug: true,
        nicHotplug: true,
        internalSnapshots: true,
        externalSnapshots: true,
      },
      labels: { rack: 'r1', 'hangar.dev/zone': 'a' },
      agentVersion: '0.1.0',
    };
    expect(defaultedFields(controlv1.HostInfo.create(), host)).toEqual([]);
    let got: controlv1.RegisterRequest | undefined;
    const impl: Partial<controlv1.AgentGatewayServer> = {
      register: (call, callback) => {
        got = call.request;
        callback(null, {
          hostId: 'host-1',
          settings: { heartbeatIntervalMs: 5000, metricsIntervalMs: 15000 },
          protocolVersion: PROTOCOL_VERSION,
        });
      },
    };
    const address = await listen((s) =>
      s.addService(controlv1.AgentGatewayService, impl as controlv1.AgentGatewayServer),
    );
    const client = gatewayClient(address);
    const req: controlv1.RegisterRequest = {
      protocolVersion: PROTOCOL_VERSION,
      joinToken: 's3cret',
      host,
      hostId: '',
    };
    const res = await unary<controlv1.RegisterResponse>((cb) => client.register(req, cb));
    expect(got).toEqual(req);
    expect(res).toEqual({
      hostId: 'host-1',
      settings: { heartbeatIntervalMs: 5000, metricsIntervalMs: 15000 },
      protocolVersion: 1,
    });
  });

  it('Session exchanges reports and acks in both directions', async () => {
    const at = new Date('2026-11-22T10:11:12.345Z');
    const reports: controlv1.SessionRequest[] = [
      {
        hostId: 'host-1',
        sequence: 1,
        body: {
          $case: 'heartbeat',
          value: {
            sentAt: at,
            inventory: [
              {
                vmId: 'vm-1',
                state: VmState.VM_STATE_RUNNING,
                qemuStatus: 'running',
                pid: 999,
                desiredState: VmState.VM_STATE_RUNNING,
                drift: false,
              },
              {
                vmId: 'vm-2',
                state: VmState.VM_STATE_STOPPED,
                qemuStatus: undefined,
                pid: undefined,
                desiredState: VmState.VM_STATE_RUNNING,
                drift: true,
              },
            ],
            orphans: [{ path: '/run/hangar/vms/ghost', pid: 31337, reason: 'no spec.json' }],
          },
        },
      },
      {
        hostId: 'host-1',
        sequence: 2,
        body: {
          $case: 'vmEvent',
          value: {
            vmId: 'vm-1',
            type: controlv1.VmEventType.VM_EVENT_TYPE_DEVICE_DELETED,
            state: VmState.VM_STATE_UNSPECIFIED,
            reason: 'guest released the device',
            at,
            detail: { device: 'scratch', attempts: 2, nested: { ok: true, none: null }, list: ['a', 1.5] },
          },
        },
      },
      {
        hostId: 'host-1',
        sequence: 3,
        body: {
          $case: 'metrics',
          value: {
            host: {
              sampledAt: at,
              cpuCount: 2,
              cpuSeconds: { user: 100.5, system: 20.25, idle: 5000, iowait: 3, steal: 0.5 },
              memoryTotalBytes: 8 * 2 ** 30,
              memoryAvailableBytes: 3 * 2 ** 30,
              load1: 0.5,
              load5: 0.75,
              load15: 1.25,
              pools: [{ name: 'shared', totalBytes: 2 ** 40, freeBytes: 2 ** 39 }],
            },
            vms: [
              {
                vmId: 'vm-1',
                sampledAt: at,
                vcpuSeconds: [1.5, 2.25],
                cpuSecondsTotal: 4.5,
                rssBytes: 300 * 2 ** 20,
                block: [{ device: 'root', rdBytes: 1, wrBytes: 2, rdOps: 3, wrOps: 4 }],
                nics: [
                  { name: 'eth0', ifname: 'hg-tap1', rxBytes: 5, txBytes: 6, rxPackets: 7, txPackets: 8 },
                ],
              },
            ],
          },
        },
      },
      {
        hostId: 'host-1',
        sequence: 4,
        body: { $case: 'dropped', value: { eventsDropped: 3, metricsDropped: 7 } },
      },
    ];

    const serverSaw: controlv1.SessionRequest[] = [];
    const impl: Partial<controlv1.AgentGatewayServer> = {
      session: (call) => {
        call.write({ notice: { $case: 'ping', value: { sentAt: at } } });
        call.on('data', (r: controlv1.SessionRequest) => {
          serverSaw.push(r);
          call.write({ notice: { $case: 'ack', value: { upToSequence: r.sequence } } });
          if (r.sequence === 2) {
            call.write({
              notice: {
                $case: 'settingsUpdate',
                value: { settings: { heartbeatIntervalMs: 2000, metricsIntervalMs: 10000 } },
              },
            });
          }
        });
        call.on('end', () => call.end());
      },
    };
    const address = await listen((s) =>
      s.addService(controlv1.AgentGatewayService, impl as controlv1.AgentGatewayServer),
    );
    const client = gatewayClient(address);

    const stream = client.session();
    const notices: controlv1.SessionResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (n: controlv1.SessionResponse) => {
        notices.push(n);
        if (n.notice?.$case === 'ack' && n.notice.value.upToSequence === reports.length) stream.end();
      });
      stream.on('error', reject);
      stream.on('status', (s: { code: number; details: string }) =>
        s.code === status.OK ? resolve() : reject(new Error(s.details)),
      );
    });
    for (const r of reports) stream.write(r);
    await done;

    expect(serverSaw).toEqual(reports);
    const hb = serverSaw[0]?.body;
    expect(hb?.$case === 'heartbeat' && hb.value.sentAt?.toISOString()).toBe('2026-11-22T10:11:12.345Z');
    expect(notices[0]).toEqual({ notice: { $case: 'ping', value: { sentAt: at } } });
    const acks = notices.flatMap((n) => (n.notice?.$case === 'ack' ? [n.notice.value.upToSequence] : []));
    expect(acks).toEqual([1, 2, 3, 4]);
    expect(notices.filter((n) => n.notice?.$case === 'settingsUpdate')).toEqual([
      {
        notice: {
          $case: 'settingsUpdate',
          value: { settings: { heartbeatIntervalMs: 2000, metricsIntervalMs: 10000 } },
        },
      },
    ]);
  });
});

describe('buf', () => {
  it('buf lint passes and the .proto files are buf-formatted', async () => {
    await expect(buf(['lint'])).resolves.toBeDefined();
    await expect(buf(['format', '-d', '--exit-code'])).resolves.toBeDefined();
  });

  it('buf lint rejects a contract that breaks the STANDARD rules (the config is not vacuous)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hangar-proto-lint-'));
    try {
      await cp(join(pkgDir, 'buf.yaml'), join(dir, 'buf.yaml'));
      await cp(join(pkgDir, 'proto'), join(dir, 'proto'), { recursive: true });
      const file = join(dir, 'proto/hangar/agent/v1/agent.proto');
      await writeFile(file, `${await readFile(file, 'utf8')}\nenum Color {\n  RED = 0;\n}\n`);
      // A directory input with its own buf.yaml is linted with that configuration.
      const err = await buf(['lint', dir]).then(
        () => undefined,
        (e: { stdout: string; code: number }) => e,
      );
      expect(err?.code).toBe(100);
      expect(err?.stdout).toContain('Enum zero value name "RED" should be suffixed with "_UNSPECIFIED"');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('src/gen is what buf generate makes from the current .proto files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hangar-proto-gen-'));
    try {
      await buf(['generate', '-o', dir]);
      const list = async (root: string): Promise<string[]> =>
        (await readdir(root, { recursive: true, withFileTypes: true }))
          .filter((e) => e.isFile())
          .map((e) => relative(root, join(e.parentPath, e.name)))
          .sort();
      const fresh = await list(join(dir, 'src/gen'));
      expect(fresh).toContain('hangar/agent/v1/agent.ts');
      expect(fresh).toContain('hangar/control/v1/control.ts');
      expect(await list(join(pkgDir, 'src/gen'))).toEqual(fresh);
      for (const f of fresh) {
        expect(await readFile(join(pkgDir, 'src/gen', f), 'utf8'), f).toBe(
          await readFile(join(dir, 'src/gen', f), 'utf8'),
        );
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
