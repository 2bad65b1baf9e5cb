import { copyFile, mkdir, rm, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { runCommand } from '@hangar/vmm-core';

/**
 * The cluster's PKI, made with Debian's `openssl` CLI (no extra npm dependency, and the commands
 * are the ones an operator would type): one cluster CA, one certificate per host (its name in
 * CN and subjectAltName, so the control plane can verify which host it is talking to), and the
 * control plane's server certificate. Keys are EC P-256, written mode 0600.
 */

/** File names inside a CA folder. */
export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';

/** A cluster CA on disk. */
export interface ClusterCa {
  dir: string;
  cert: string;
  key: string;
}

/**
 * A certificate issued by the cluster CA, with a copy of the CA certificate next to it so the
 * folder is everything one host (or the control plane) needs. The paths fit `AgentConfig.tls`.
 */
export interface IssuedCert {
  /** The CA certificate the peer is checked against. */
  ca: string;
  cert: string;
  key: string;
  commonName: string;
  dnsNames: string[];
  ips: string[];
}

/** Options of {@link createClusterCa}. */
export interface ClusterCaOptions {
  commonName?: string;
  days?: number;
  /** Replace an existing CA. Every certificate it issued stops being trusted. */
  force?: boolean;
}

/** Options of {@link issueHostCert} and {@link issueControlPlaneCert}. */
export interface IssueOptions {
  days?: number;
  /** Extra DNS names in subjectAltName. */
  dnsNames?: string[];
  /** IP addresses in subjectAltName (hosts: default 127.0.0.1, for loopback development). */
  ips?: string[];
}

/** The same rule as `AgentConfig.hostName`: a DNS name, so it is safe in a certificate subject. */
const HOST_NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/;
const OPENSSL_TIMEOUT_MS = 30_000;

/**
 * Creates the cluster CA (`ca.crt`, `ca.key`) in `dir`. Refuses to overwrite an existing CA
 * unless `force`, because that would silently invalidate every host certificate.
 */
export async function createClusterCa(dir: string, options: ClusterCaOptions = {}): Promise<ClusterCa> {
  const cert = path.join(dir, CA_CERT_FILE);
  const key = path.join(dir, CA_KEY_FILE);
  if (!options.force && (await exists(cert))) {
    throw new Error(`${cert} already exists; use --force (force: true) to replace the cluster CA`);
  }
  const commonName = options.commonName ?? 'hangar-cluster-ca';
  assertSubjectSafe(commonName);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await openssl([
    'req',
    '-x509',
    ...newKeyArgs(key),
    '-out',
    cert,
    '-days',
    String(options.days ?? 3650),
    '-subj',
    `/CN=${commonName}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE,pathlen:0',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { dir, cert, key };
}

/**
 * Issues `<outDir>/<hostName>.crt` and `.key` for one hypervisor host, signed by the CA in
 * `caDir`, with the host name as CN and DNS subjectAltName (plus IP 127.0.0.1 by default). The
 * certificate is good for both ends: the agent's client side of the Session and its HostAgent
 * server. `ca.crt` is copied into `outDir`.
 */
export async function issueHostCert(
  caDir: string,
  hostName: string,
  outDir: string,
  options: IssueOptions = {},
): Promise<IssuedCert> {
  if (!HOST_NAME_RE.test(hostName))
    throw new Error(`invalid host name for a certificate: ${JSON.stringify(hostName)}`);
  return issue(caDir, outDir, hostName, {
    commonName: hostName,
    dnsNames: [hostName, ...(options.dnsNames ?? [])],
    ips: options.ips ?? ['127.0.0.1'],
    days: options.days ?? 825,
  });
}

/**
 * Issues `<outDir>/control-plane.crt` and `.key`: the AgentGateway's server certificate (also
 * usable as the api's client certificate towards agents). Defaults: DNS localhost, IP 127.0.0.1.
 */
export async function issueControlPlaneCert(
  caDir: string,
  outDir: string,
  options: IssueOptions & { commonName?: string } = {},
): Promise<IssuedCert> {
  return issue(caDir, outDir, 'control-plane', {
    commonName: options.commonName ?? 'hangar-control-plane',
    dnsNames: options.dnsNames ?? ['localhost'],
    ips: options.ips ?? ['127.0.0.1'],
    days: options.days ?? 825,
  });
}

async function issue(
  caDir: string,
  outDir: string,
  baseName: string,
  subject: { commonName: string; dnsNames: string[]; ips: string[]; days: number },
): Promise<IssuedCert> {
  const caCert = path.join(caDir, CA_CERT_FILE);
  const caKey = path.join(caDir, CA_KEY_FILE);
  if (!(await exists(caCert)) || !(await exists(caKey))) {
    throw new Error(`no cluster CA in ${caDir} (expected ${CA_CERT_FILE} and ${CA_KEY_FILE})`);
  }
  assertSubjectSafe(subject.commonName);
  const dnsNames = [...new Set(subject.dnsNames)];
  for (const name of dnsNames) {
    if (!HOST_NAME_RE.test(name))
      throw new Error(`invalid DNS name for a certificate: ${JSON.stringify(name)}`);
  }
  const ips = [...new Set(subject.ips)];
  for (const ip of ips)
    if (isIP(ip) === 0) throw new Error(`invalid IP address for a certificate: ${JSON.stringify(ip)}`);
  const san = [...dnsNames.map((n) => `DNS:${n}`), ...ips.map((ip) => `IP:${ip}`)].join(',');
  if (!san) throw new Error('a certificate needs at least one DNS name or IP address');

  await mkdir(outDir, { recursive: true, mode: 0o755 });
  const cert = path.join(outDir, `${baseName}.crt`);
  const key = path.join(outDir, `${baseName}.key`);
  try {
    // `req -x509 -CA` (OpenSSL 3) signs in one step, with extensions from the command line:
    // no CSR or extension file to leave behind.
    await openssl([
      'req',
      '-x509',
      ...newKeyArgs(key),
      '-out',
      cert,
      '-CA',
      caCert,
      '-CAkey',
      caKey,
      '-days',
      String(subject.days),
      '-subj',
      `/CN=${subject.commonName}`,
      '-addext',
      `subjectAltName=${san}`,
      '-addext',
      'basicConstraints=critical,CA:FALSE',
      '-addext',
      'keyUsage=critical,digitalSignature',
      '-addext',
      'extendedKeyUsage=serverAuth,clientAuth',
    ]);
  } catch (err) {
    await Promise.all([rm(cert, { force: true }), rm(key, { force: true })]);
    throw err;
  }
  const ca = path.join(outDir, CA_CERT_FILE);
  if (path.resolve(ca) !== path.resolve(caCert)) await copyFile(caCert, ca);
  return { ca, cert, key, commonName: subject.commonName, dnsNames, ips };
}

/** The subject names and validity of a certificate file, as openssl reads it (for the CLI and tests). */
export async function describeCert(
  certFile: string,
): Promise<{ subject: string; issuer: string; san: string }> {
  const { stdout } = await openssl([
    'x509',
    '-in',
    certFile,
    '-noout',
    '-subject',
    '-issuer',
    '-ext',
    'subjectAltName',
  ]);
  const line = (prefix: string) =>
    stdout
      .split('\n')
      .find((l) => l.startsWith(prefix))
      ?.slice(prefix.length)
      .trim() ?? '';
  const sanIndex = stdout.indexOf('Subject Alternative Name');
  const san = sanIndex >= 0 ? (stdout.slice(sanIndex).split('\n')[1]?.trim() ?? '') : '';
  return { subject: line('subject='), issuer: line('issuer='), san };
}

/** Checks that `certFile` was signed by the CA in `caCert` (`openssl verify`). */
export async function verifyCertChain(caCert: string, certFile: string): Promise<boolean> {
  try {
    await openssl(['verify', '-CAfile', caCert, certFile]);
    return true;
  } catch {
    return false;
  }
}

function newKeyArgs(keyFile: string): string[] {
  return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile];
}

/** `/` and `=` would start another subject attribute in `-subj`. */
function assertSubjectSafe(commonName: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$/.test(commonName)) {
    throw new Error(`invalid certificate common name: ${JSON.stringify(commonName)}`);
  }
}

async function openssl(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return runCommand('openssl', args, { timeoutMs: OPENSSL_TIMEOUT_MS });
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}
