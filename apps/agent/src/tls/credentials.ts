import { readFile } from 'node:fs/promises';
import { type ChannelCredentials, credentials, ServerCredentials } from '@grpc/grpc-js';

/** PEM material of one end of an mTLS connection. */
export interface TlsMaterial {
  /** The cluster CA certificate the peer must chain to. */
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** Paths of the PEM files (the shape of `AgentConfig.tls` and of `IssuedCert`). */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** Reads the three PEM files once, at start-up, so a missing file fails early and clearly. */
export async function readTlsFiles(files: TlsFiles): Promise<TlsMaterial> {
  const read = async (what: keyof TlsFiles) => {
    try {
      return await readFile(files[what]);
    } catch (err) {
      throw new Error(`cannot read the TLS ${what} file ${files[what]}: ${(err as Error).message}`);
    }
  };
  const [ca, cert, key] = await Promise.all([read('ca'), read('cert'), read('key')]);
  return { ca, cert, key };
}

/**
 * Client credentials for the agent's Session to the control plane: presents the host
 * certificate and accepts only a gateway whose certificate chains to the cluster CA and names
 * the address dialled (grpc-js checks the host name / IP against the subjectAltName).
 */
export function agentChannelCredentials(material: TlsMaterial): ChannelCredentials {
  return credentials.createSsl(material.ca, material.key, material.cert);
}

/**
 * Server credentials for either end that serves gRPC inside the cluster (the api's AgentGateway,
 * each agent's HostAgent): the peer must present a certificate from the cluster CA, or the
 * handshake fails before any call is made.
 */
export function mtlsServerCredentials(material: TlsMaterial): ServerCredentials {
  return ServerCredentials.createSsl(
    material.ca,
    [{ cert_chain: material.cert, private_key: material.key }],
    true,
  );
}
