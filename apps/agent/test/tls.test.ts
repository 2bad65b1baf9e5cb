import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { credentials, type ServiceError, status } from '@grpc/grpc-js';
import { controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually, makeOwnedTempDir } from '../../../packages/vmm-core/test/support/test-host.js';
import { ControlSession } from '../src/session/control-session.js';
import {
  type ClusterCa,
  createClusterCa,
  describeCert,
  type IssuedCert,
  issueControlPlaneCert,
  issueHostCert,
  verifyCertChain,
} from '../src/tls/certs.js';
import { runCertsCommand } from '../src/tls/certs-cli.js';
import { agentChannelCredentials, readTlsFiles, type TlsMaterial } from '../src/tls/credentials.js';
import { verifyPeerHostName } from '../src/tls/peer-identity.js';
import { FakeInventory, MemoryLogger } from './support/session-fakes.js';
import { TestGateway } from './support/test-gateway.js';

/**
 * Connects with raw TLS (ALPN h2, as gRPC does) and sends the HTTP/2 preface. A server that took
 * the client certificate answers with its SETTINGS frame; one that refused it closes the
 * connection right after the handshake (Node does so without an alert; a missing certificate
 * gets OpenSSL's "certificate required" alert).
 */
function probeTls(address: string, material: TlsMaterial): Promise<{ accepted: boolean; detail: string }> {
  const [host, port] = address.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port: Number(port),
      ca: material.ca,
      cert: material.cert,
      key: material.key,
      ALPNProtocols: ['h2'],
    });
    const done = (result: { accepted: boolean; detail: string }) => {
      clearTimeout(timer);
      socket.removeAllListeners();
      socket.on('error', () => undefined);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('the server neither answered nor closed within 5 s'));
    }, 5_000);
    socket.on('secureConnect', () => socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    socket.on('data', () => done({ accepted: true, detail: 'HTTP/2 answer' }));
    socket.on('error', (err) => done({ accepted: false, detail: err.message }));
    socket.on('close', () => done({ accepted: false, detail: 'closed by the server after the handshake' }));
  });
}

/** One Register straight over a raw client, to see the transport's own error. */
function registerOnce(address: string, material: TlsMaterial, hostname: string) {
  const client = new controlv1.AgentGatewayClient(address, agentChannelCredentials(material));
  return new Promise<controlv1.RegisterResponse>((resolve, reject) => {
    client.register(
      controlv1.RegisterRequest.fromPartial({ protocolVersion: PROTOCOL_VERSION, host: { hostname } }),
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  }).finally(() => client.close());
}

describe('mTLS between agent and control plane', () => {
  let dir: string;
  let ca: ClusterCa;
  let rogueCa: ClusterCa;
  let controlPlane: IssuedCert;
  let alpha: IssuedCert;
  let rogueAlpha: IssuedCert;
  let gw: TestGateway | undefined;
  const sessions: ControlSession[] = [];

  const hostInfo = (hostname: string) => async () => controlv1.HostInfo.fromPartial({ hostname, cores: 2 });
  const openSession = (material: TlsMaterial, hostname: string, logger = new MemoryLogger()) => {
    const s = new ControlSession({
      address: gw!.address,
      credentials: agentChannelCredentials(material),
      hostInfo: hostInfo(hostname),
      inventory: new FakeInventory(),
      heartbeatIntervalMs: 200,
      metricsIntervalMs: 300,
      bufferLimit: 100,
      logger,
      reconnect: { initialDelayMs: 50, maxDelayMs: 300 },
    });
    sessions.push(s);
    return s;
  };

  beforeAll(async () => {
    dir = await makeOwnedTempDir('tls');
    ca = await createClusterCa(path.join(dir, 'pki'));
    rogueCa = await createClusterCa(path.join(dir, 'rogue-pki'), { commonName: 'some-other-ca' });
    controlPlane = await issueControlPlaneCert(ca.dir, path.join(dir, 'api'));
    alpha = await issueHostCert(ca.dir, 'alpha', path.join(dir, 'alpha'));
    rogueAlpha = await issueHostCert(rogueCa.dir, 'alpha', path.join(dir, 'rogue-alpha'));
  });
  afterEach(async () => {
    for (const s of sessions.splice(0)) await s.stop();
    await gw?.close();
    gw = undefined;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates a cluster CA and certificates that name the host and chain to that CA only', async () => {
    const host = await describeCert(alpha.cert);
    expect(host.subject).toBe('CN = alpha');
    expect(host.issuer).toBe('CN = hangar-cluster-ca');
    expect(host.san).toBe('DNS:alpha, IP Address:127.0.0.1');
    expect(alpha).toMatchObject({ commonName: 'alpha', dnsNames: ['alpha'], ips: ['127.0.0.1'] });
    expect(alpha.ca).toBe(path.join(dir, 'alpha', 'ca.crt'));
    expect((await describeCert(controlPlane.cert)).san).toBe('DNS:localhost, IP Address:127.0.0.1');
    expect(await verifyCertChain(ca.cert, alpha.cert)).toBe(true);
    expect(await verifyCertChain(ca.cert, rogueAlpha.cert)).toBe(false);
    expect((await stat(alpha.key)).mode & 0o077).toBe(0);
    expect((await stat(ca.key)).mode & 0o077).toBe(0);

    await expect(createClusterCa(ca.dir)).rejects.toThrow(/already exists/);
    await expect(issueHostCert(ca.dir, 'bad/name', path.join(dir, 'x'))).rejects.toThrow(/invalid host name/);
    await expect(issueHostCert(path.join(dir, 'nope'), 'beta', path.join(dir, 'x'))).rejects.toThrow(
      /no cluster CA/,
    );

    // The operator's entry point (scripts/gen-certs.sh runs this).
    const lines: string[] = [];
    const code = await runCertsCommand(
      ['host', '--ca-dir', ca.dir, '--name', 'gamma', '--out', path.join(dir, 'gamma'), '--ip', '10.0.0.7'],
      (l) => lines.push(l),
    );
    expect(code).toBe(0);
    expect(lines.join('\n')).toMatch(/san DNS:gamma, IP Address:10\.0\.0\.7/);
    expect(await verifyCertChain(ca.cert, path.join(dir, 'gamma', 'gamma.crt'))).toBe(true);
  });

  it('runs the session over mTLS and verifies the host identity from the certificate', async () => {
    gw = await TestGateway.start({
      tls: await readTlsFiles(controlPlane),
      requireVerifiedIdentity: true,
    });
    const session = openSession(await readTlsFiles(alpha), 'alpha');
    await session.start();
    await session.whenConnected(5_000);
    await gw.waitFor(() => (gw!.heartbeats().length >= 2 ? true : undefined), 'heartbeats over mTLS');
    await gw.waitFor(() => gw!.metrics()[0], 'a metrics batch over mTLS');

    const reg = gw.registers[0]!;
    expect(reg.refused).toBeUndefined();
    expect(reg.identity).toEqual({
      verified: true,
      hostName: 'alpha',
      peer: { commonName: 'alpha', dnsNames: ['alpha'], ips: ['127.0.0.1'] },
    });
  });

  it('refuses a client whose certificate comes from another CA, and one without a certificate', async () => {
    gw = await TestGateway.start({ tls: await readTlsFiles(controlPlane) });
    // The cluster CA certificate is public: the rogue client trusts the real gateway, so only the
    // gateway's check of the client certificate can stop it.
    const rogue = { ...(await readTlsFiles(rogueAlpha)), ca: (await readTlsFiles(alpha)).ca };
    const err = (await registerOnce(gw.address, rogue, 'alpha').then(
      () => undefined,
      (e: ServiceError) => e,
    )) as ServiceError | undefined;
    expect(err, 'the handshake must fail').toBeDefined();
    expect(err!.code).toBe(status.UNAVAILABLE);
    expect(err!.details).toMatch(/No connection established/);
    // At the TLS level: the gateway hangs up on the rogue certificate and talks to the real one.
    expect(await probeTls(gw.address, rogue)).toEqual({
      accepted: false,
      detail: 'closed by the server after the handshake',
    });
    expect(await probeTls(gw.address, await readTlsFiles(alpha))).toEqual({
      accepted: true,
      detail: 'HTTP/2 answer',
    });

    const noCert = credentials.createSsl((await readTlsFiles(alpha)).ca);
    const client = new controlv1.AgentGatewayClient(gw.address, noCert);
    const err2 = await new Promise<ServiceError | null>((resolve) =>
      client.register(controlv1.RegisterRequest.fromPartial({ protocolVersion: PROTOCOL_VERSION }), (e) =>
        resolve(e),
      ),
    );
    client.close();
    expect(err2?.code).toBe(status.UNAVAILABLE);
    expect(err2?.details).toMatch(/alert certificate required/);

    // The agent's own session keeps failing the same way and never gets in.
    const session = openSession(rogue, 'alpha');
    await session.start();
    await eventually(() => (session.stats().failedAttempts >= 2 ? true : undefined), { timeoutMs: 5_000 });
    expect(session.stats()).toMatchObject({ connected: false, sessionsOpened: 0 });
    expect(session.stats().lastError).toMatch(/^UNAVAILABLE/);
    // No call ever reached the gateway's handlers.
    expect(gw.registers).toEqual([]);
    expect(gw.sessionCount).toBe(0);
  });

  it('refuses a gateway whose certificate comes from another CA', async () => {
    const rogueGatewayCert = await issueControlPlaneCert(rogueCa.dir, path.join(dir, 'rogue-api'));
    gw = await TestGateway.start({ tls: await readTlsFiles(rogueGatewayCert) });
    const err = await registerOnce(gw.address, await readTlsFiles(alpha), 'alpha').then(
      () => undefined,
      (e: ServiceError) => e,
    );
    expect(err?.code).toBe(status.UNAVAILABLE);
    expect(err?.details).toMatch(/certificate/);
    expect(gw.registers).toEqual([]);
  });

  it('detects a host certificate whose name differs from the host the agent claims to be', async () => {
    gw = await TestGateway.start({ tls: await readTlsFiles(controlPlane), requireVerifiedIdentity: true });
    const logger = new MemoryLogger();
    // alpha's certificate, claiming to be beta.
    const session = openSession(await readTlsFiles(alpha), 'beta', logger);
    await session.start();
    const reg = await gw.waitFor(() => gw!.registers[0], 'a Register');
    expect(reg.identity?.verified).toBe(false);
    expect(reg.identity).toMatchObject({ hostName: 'beta', peer: { commonName: 'alpha' } });
    expect(reg.refused).toMatch(/for "alpha".*not "beta"/);
    await eventually(() => (session.stats().lastError ? true : undefined), { timeoutMs: 3_000 });
    expect(session.stats().lastError).toMatch(/^PERMISSION_DENIED/);
    expect(session.stats().connected).toBe(false);
    expect(logger.messages('error')).toContain('the control plane refused this agent');
    expect(gw.sessionCount).toBe(0);
  });

  it('never verifies a plaintext call', () => {
    const plaintext = { getAuthContext: () => ({}) };
    expect(verifyPeerHostName(plaintext, 'alpha')).toMatchObject({
      verified: false,
      reason: 'the call is not over TLS',
    });
    expect(verifyPeerHostName({ getAuthContext: () => null }, 'alpha').verified).toBe(false);
  });
});
