// The mTLS material of a multi-host cluster (docs/adr/0045): between network namespaces gRPC is
// not on loopback, so the api and the agents refuse plaintext, and the scripts make what an
// operator makes with scripts/gen-certs.sh: a cluster CA, the control plane's certificate naming
// the bridge address agents dial, and one certificate per host naming its host name (the
// identity the api checks) and its namespace address (what the worker dials). Certificates are
// issued again only when missing or when the address they must name changed.

import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writePrivate } from './lib.mjs';

/**
 * @typedef {{ ca: string, cert: string, key: string }} TlsFiles
 * @typedef {{ controlPlane: TlsFiles, hosts: Record<string, TlsFiles> }} ClusterPki
 */

/**
 * Makes (or reuses) the CA under `<pkiDir>/ca`, the control plane's certificate for the fabric's
 * gateway address and one certificate per host.
 * @param {string} pkiDir
 * @param {import('./hosts.mjs').Fabric} fabric
 * @returns {Promise<ClusterPki>}
 */
export async function ensurePki(pkiDir, fabric) {
  const { createClusterCa, issueControlPlaneCert, issueHostCert } = await import(
    '../../apps/agent/dist/tls/certs.js'
  );
  const caDir = path.join(pkiDir, 'ca');
  const recordFile = path.join(pkiDir, 'issued.json');
  /** @type {Record<string, string>} what each certificate was issued for */
  let issued = {};
  if (!existsSync(path.join(caDir, 'ca.crt')) || !existsSync(path.join(caDir, 'ca.key'))) {
    await createClusterCa(caDir, { commonName: `hangar-${fabric.tag}-ca`, force: true });
  } else {
    issued = await readFile(recordFile, 'utf8').then(
      (text) => JSON.parse(text),
      () => ({}),
    );
  }
  const files = (dir, base) => ({
    ca: path.join(dir, 'ca.crt'),
    cert: path.join(dir, `${base}.crt`),
    key: path.join(dir, `${base}.key`),
  });
  const current = (key, want, tls) =>
    issued[key] === want && existsSync(tls.cert) && existsSync(tls.key) && existsSync(tls.ca);

  const cpDir = path.join(pkiDir, 'control-plane');
  const controlPlane = files(cpDir, 'control-plane');
  const cpWant = `${fabric.gateway},127.0.0.1`;
  if (!current('control-plane', cpWant, controlPlane)) {
    await issueControlPlaneCert(caDir, cpDir, {
      ips: [fabric.gateway, '127.0.0.1'],
      dnsNames: ['localhost'],
    });
    issued['control-plane'] = cpWant;
  }
  /** @type {Record<string, TlsFiles>} */
  const hosts = {};
  const hostsDir = path.join(pkiDir, 'hosts');
  for (const host of fabric.hosts) {
    const tls = files(hostsDir, host.name);
    if (!current(`host:${host.name}`, host.address, tls)) {
      await issueHostCert(caDir, host.name, hostsDir, { ips: [host.address] });
      issued[`host:${host.name}`] = host.address;
    }
    hosts[host.name] = tls;
  }
  await writePrivate(recordFile, `${JSON.stringify(issued, null, 2)}\n`);
  return { controlPlane, hosts };
}
