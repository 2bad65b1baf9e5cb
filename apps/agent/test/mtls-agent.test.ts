import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { type ChannelCredentials, credentials, status } from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import { parseVmSpec } from '@hangar/vmm-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestHost, type TestHost, tinySpec } from '../../../packages/vmm-core/test/support/test-host.js';
import { AgentConfigError, loadAgentConfig } from '../src/config/agent-config.js';
import { vmSpecToProto } from '../src/grpc/mappers.js';
import { createClusterCa, type IssuedCert, issueControlPlaneCert, issueHostCert } from '../src/tls/certs.js';
import {
  agentMainJs,
  buildAgent,
  hostAgentClient,
  type InProcessAgent,
  rpc,
  rpcError,
  startInProcessAgent,
  testAgentConfig,
} from './support/agent-harness.js';

const run = promisify(execFile);

/**
 * The HostAgent server with mutual TLS from the cluster CA (apps/agent/src/tls/certs.ts): only a
 * client holding a certificate of that CA gets a call through. A real agent (QEMU driver) on
 * 127.0.0.1; no guest boots, CreateVm only prepares one so GetVm has something to return.
 */
describe('HostAgent over mTLS', () => {
  let host: TestHost;
  let agent: InProcessAgent;
  let controlPlane: IssuedCert;
  let rogueClient: IssuedCert;
  let hostCert: IssuedCert;
  let ca: Buffer;

  const clientWith = async (files: { key: string; cert: string } | undefined): Promise<ChannelCredentials> =>
    files
      ? credentials.createSsl(ca, await readFile(files.key), await readFile(files.cert))
      : credentials.createSsl(ca);

  /** One GetVm with fresh credentials; the channel is closed afterwards. */
  const getVmWith = async (creds: ChannelCredentials, vmId = 'tls1') => {
    const client = hostAgentClient(agent.address, creds);
    try {
      return await rpc(client, client.getVm, { vmId }, { timeoutMs: 5_000 });
    } finally {
      client.close();
    }
  };

  beforeAll(async () => {
    host = await makeTestHost({ label: 'agent-mtls' });
    const pki = path.join(host.root, 'pki');
    const cluster = await createClusterCa(pki);
    const rogue = await createClusterCa(path.join(host.root, 'rogue-pki'), { commonName: 'another-ca' });
    hostCert = await issueHostCert(cluster.dir, 'hv-tls', path.join(host.root, 'tls'));
    controlPlane = await issueControlPlaneCert(cluster.dir, path.join(host.root, 'api'));
    // Same name as the real control plane, signed by another CA: only the issuer differs.
    rogueClient = await issueControlPlaneCert(rogue.dir, path.join(host.root, 'rogue-api'));
    ca = await readFile(cluster.cert);
    agent = await startInProcessAgent(
      testAgentConfig(host, {
        hostName: 'hv-tls',
        insecureLoopback: false,
        tls: { ca: hostCert.ca, cert: hostCert.cert, key: hostCert.key },
      }),
    );
    agent.client.close();
  });
  afterAll(async () => {
    await agent?.stop();
    await host?.cleanup();
  });

  it('serves GetVm and ListVms to a client with a certificate from the cluster CA', async () => {
    const client = hostAgentClient(agent.address, await clientWith(controlPlane));
    try {
      const created = await rpc(client, client.createVm, {
        operationId: 'op-tls-create',
        spec: vmSpecToProto(parseVmSpec(tinySpec('tls1'))),
      });
      expect(created.vm?.state).toBe(agentv1.VmState.VM_STATE_STOPPED);
      const got = await rpc(client, client.getVm, { vmId: 'tls1' });
      expect(got.vm).toMatchObject({ id: 'tls1', state: agentv1.VmState.VM_STATE_STOPPED });
      const listed = await rpc(client, client.listVms, {});
      expect(listed.vms.map((v) => v.id)).toEqual(['tls1']);
      // The handshake is not what fails for an unknown VM: the call arrives and gets NOT_FOUND.
      expect((await rpcError(rpc(client, client.getVm, { vmId: 'nope' }))).code).toBe(status.NOT_FOUND);
    } finally {
      client.close();
    }
    // Another agent of the cluster (its host certificate) is a cluster client as well.
    expect((await getVmWith(await clientWith(hostCert))).vm?.id).toBe('tls1');
  });

  it('refuses a client whose certificate comes from another CA', async () => {
    const err = await rpcError(getVmWith(await clientWith(rogueClient)));
    expect(err.code).toBe(status.UNAVAILABLE);
    // Refused at the handshake, not by the service: the server still serves its own clients.
    expect((await getVmWith(await clientWith(controlPlane))).vm?.id).toBe('tls1');
  });

  it('refuses a TLS client without a certificate and a plaintext client', async () => {
    const noCert = await rpcError(getVmWith(await clientWith(undefined)));
    expect(noCert.code).toBe(status.UNAVAILABLE);
    const plaintext = await rpcError(getVmWith(credentials.createInsecure()));
    expect(plaintext.code).toBe(status.UNAVAILABLE);
    const listed = hostAgentClient(agent.address, credentials.createInsecure());
    try {
      expect((await rpcError(rpc(listed, listed.listVms, {}, { timeoutMs: 5_000 }))).code).toBe(
        status.UNAVAILABLE,
      );
    } finally {
      listed.close();
    }
    expect((await getVmWith(await clientWith(controlPlane))).vm?.id).toBe('tls1');
  });
});

describe('plaintext only on loopback', () => {
  const pools = JSON.stringify({ local: { path: '/tmp' } });
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HANGAR_AGENT_')));

  it('is a configuration error on a non-loopback listen or control-plane address, and without TLS files', () => {
    const load =
      (...flags: string[]) =>
      () =>
        loadAgentConfig(['--pools', pools, ...flags], {});
    expect(
      load('--control-plane', '127.0.0.1:9000', '--listen', '0.0.0.0:7443', '--insecure-loopback'),
    ).toThrow(/listen: plaintext gRPC is only allowed on loopback addresses/);
    expect(
      load('--control-plane', '10.0.0.5:9000', '--listen', '127.0.0.1:7443', '--insecure-loopback'),
    ).toThrow(/controlPlane: plaintext gRPC is only allowed on loopback addresses/);
    expect(load('--control-plane', '127.0.0.1:9000', '--listen', '[::]:7443', '--insecure-loopback')).toThrow(
      AgentConfigError,
    );
    expect(load('--control-plane', '127.0.0.1:9000', '--listen', '127.0.0.1:7443')).toThrow(
      /tls: TLS files are required unless insecureLoopback is set/,
    );
    expect(
      load('--control-plane', '127.0.0.1:9000', '--listen', '[::1]:0', '--insecure-loopback')()
        .insecureLoopback,
    ).toBe(true);
  });

  it('hangar-agent exits 2 before listening when asked for plaintext on 0.0.0.0', async () => {
    await buildAgent();
    const failed = await run(
      process.execPath,
      [
        agentMainJs,
        '--control-plane',
        '127.0.0.1:1',
        '--listen',
        '0.0.0.0:0',
        '--insecure-loopback',
        '--pools',
        pools,
        '--driver',
        'fake',
      ],
      { env, timeout: 20_000 },
    ).then(
      () => undefined,
      (err: { code?: number; stdout?: string; stderr?: string }) => err,
    );
    expect(failed?.code).toBe(2);
    expect(failed?.stderr).toMatch(/listen: plaintext gRPC is only allowed on loopback addresses/);
    expect(failed?.stdout ?? '').not.toMatch(/agent listening/);
  });
});
