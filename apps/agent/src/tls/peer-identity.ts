import type { PeerCertificate } from 'node:tls';

/**
 * Any grpc-js call that can tell who is on the other end: server unary/stream calls and client
 * calls all have `getAuthContext()` (grpc-js 1.14). grpc-js only fills `sslPeerCertificate` when
 * the TLS socket is `authorized`, i.e. the certificate chained to the CA the server trusts.
 */
export interface CallWithAuthContext {
  getAuthContext(): {
    transportSecurityType?: string;
    sslPeerCertificate?: PeerCertificate;
  } | null;
}

/** The names a peer's verified certificate carries. */
export interface PeerNames {
  commonName: string | undefined;
  dnsNames: string[];
  ips: string[];
}

/** The outcome of {@link verifyPeerHostName}. */
export type PeerIdentityCheck =
  | { verified: true; hostName: string; peer: PeerNames }
  | { verified: false; hostName: string; peer: PeerNames | undefined; reason: string };

/** The CN and subjectAltName entries of the peer's verified certificate; undefined without one. */
export function peerCertificateNames(call: CallWithAuthContext): PeerNames | undefined {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (!cert) return undefined;
  const cn = cert.subject?.CN as string | string[] | undefined;
  const dnsNames: string[] = [];
  const ips: string[] = [];
  // Node renders subjectAltName as `DNS:a, DNS:b, IP Address:127.0.0.1`.
  for (const part of (cert.subjectaltname ?? '').split(',')) {
    const entry = part.trim();
    if (entry.startsWith('DNS:')) dnsNames.push(entry.slice(4));
    else if (entry.startsWith('IP Address:')) ips.push(entry.slice(11));
  }
  return { commonName: Array.isArray(cn) ? cn[0] : cn, dnsNames, ips };
}

/**
 * The control plane's check that a host is who it claims to be: the host name a Register claims
 * (or the name on record for the host id it claims) must be the CN of the peer's certificate
 * and one of its DNS subjectAltNames. Both, not either: a certificate that names the host only
 * in one place was not issued by `issueHostCert` and is not trusted for identity. Compared
 * case-insensitively, as DNS names are. Plaintext calls are never verified.
 */
export function verifyPeerHostName(call: CallWithAuthContext, expectedHostName: string): PeerIdentityCheck {
  const auth = call.getAuthContext();
  if (auth?.transportSecurityType !== 'ssl') {
    return {
      verified: false,
      hostName: expectedHostName,
      peer: undefined,
      reason: 'the call is not over TLS',
    };
  }
  const peer = peerCertificateNames(call);
  if (!peer) {
    return {
      verified: false,
      hostName: expectedHostName,
      peer: undefined,
      reason: 'the peer presented no certificate signed by the cluster CA',
    };
  }
  const want = expectedHostName.toLowerCase();
  const cnMatches = peer.commonName?.toLowerCase() === want;
  const sanMatches = peer.dnsNames.some((n) => n.toLowerCase() === want);
  if (cnMatches && sanMatches) return { verified: true, hostName: expectedHostName, peer };
  return {
    verified: false,
    hostName: expectedHostName,
    peer,
    reason: `the peer certificate is for ${JSON.stringify(peer.commonName ?? '')} (DNS ${peer.dnsNames.join(', ') || 'none'}), not ${JSON.stringify(expectedHostName)}`,
  };
}
