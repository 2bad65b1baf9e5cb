import { ServerCredentials } from '@grpc/grpc-js';
import type { AgentConfig } from '../config/agent-config.js';
import { mtlsServerCredentials, readTlsFiles } from '../tls/credentials.js';

/**
 * The HostAgent server's credentials: mutual TLS with the cluster CA (clients must present a
 * certificate it signed), or plaintext only when the configuration explicitly says loopback
 * development (`insecureLoopback`, which the config schema allows on loopback addresses only).
 */
export async function serverCredentials(
  config: Pick<AgentConfig, 'tls' | 'insecureLoopback'>,
): Promise<ServerCredentials> {
  if (config.insecureLoopback) return ServerCredentials.createInsecure();
  if (!config.tls) throw new Error('TLS files are required unless insecureLoopback is set');
  return mtlsServerCredentials(await readTlsFiles(config.tls));
}
