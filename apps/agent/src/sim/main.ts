#!/usr/bin/env node
import { readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { type AgentConfig, loadAgentConfig } from '../config/agent-config.js';
import { createLogger } from '../log.js';
import { type SimulationFlags, splitSimulationFlags } from './flags.js';
import { AgentSimulator, type SimulatorTls } from './simulator.js';

/** Exit codes, as `hangar-agent`'s: 0 stopped on a signal, 1 failed, 2 bad configuration or flags. */
const EXIT_FAILURE = 1;
const EXIT_BAD_CONFIG = 2;

function hostOf(address: string): string {
  return address.replace(/:\d+$/, '');
}

function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '[::]';
}

/**
 * `hangar-agent --simulate N [config flags]` (or `node dist/sim/main.js --simulate N …`): runs N
 * simulated agents on the fake driver from the same configuration a real agent reads. Per agent:
 * host name `<prefix><i>`, state in `<stateDir>/simulated/<prefix><i>`, HostAgent on
 * `<listen host>:0`. TLS as configured: `tls` files shared by all agents, or `--sim-ca-dir` to
 * issue one certificate per agent; plaintext with `insecureLoopback`. Join tokens: the configured
 * `joinToken` for every agent, or `--sim-join-tokens FILE` (one per line, the k-th for agent k) for a
 * control plane whose tokens are single-use. Stops on SIGTERM/SIGINT.
 */
export async function runSimulatorCli(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  let config: AgentConfig;
  let flags: SimulationFlags;
  let joinTokens: string[] | undefined;
  try {
    const split = splitSimulationFlags(argv);
    flags = split.flags;
    config = loadAgentConfig(split.rest, env);
    if (flags.joinTokensFile !== undefined) {
      if (config.joinToken !== undefined) {
        throw new Error(
          'give --join-token (one for every agent) or --sim-join-tokens (one per agent), not both',
        );
      }
      joinTokens = readJoinTokens(flags.joinTokensFile, flags.count);
    }
  } catch (err) {
    process.stderr.write(`hangar-agent --simulate: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(EXIT_BAD_CONFIG);
  }
  const logger = createLogger({ level: config.logLevel, base: { simulated: true } });
  const listenHost = hostOf(config.listen);
  const tls: SimulatorTls = flags.caDir
    ? { mode: 'per-host', caDir: flags.caDir }
    : config.insecureLoopback || !config.tls
      ? { mode: 'insecure' }
      : { mode: 'shared', files: config.tls };
  const advertiseHost = config.advertise
    ? hostOf(config.advertise)
    : isWildcard(listenHost)
      ? '127.0.0.1'
      : undefined;
  const simulator = new AgentSimulator();

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal while stopping; exiting now');
      process.exit(EXIT_FAILURE);
    }
    stopping = true;
    logger.info({ signal }, 'signal received; stopping simulated agents');
    simulator.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'simulator stop failed');
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    await simulator.start({
      count: flags.count,
      controlPlane: config.controlPlane,
      stateDir: path.join(config.stateDir, 'simulated'),
      runtimeDir: path.join(config.runtimeDir, 'simulated'),
      pools: config.pools,
      listenHost,
      ...(advertiseHost !== undefined ? { advertiseHost } : {}),
      migrationAddress: config.migrationAddress,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      metricsIntervalMs: config.metricsIntervalMs,
      bufferLimit: config.bufferLimit,
      ...(config.joinToken !== undefined ? { joinToken: config.joinToken } : {}),
      ...(joinTokens !== undefined ? { joinTokens } : {}),
      ...(flags.prefix !== undefined ? { namePrefix: flags.prefix } : {}),
      ...(flags.firstIndex !== undefined ? { firstIndex: flags.firstIndex } : {}),
      ...(flags.staggerMs !== undefined ? { staggerMs: flags.staggerMs } : {}),
      tls,
      logger,
    });
  } catch (err) {
    logger.fatal({ err }, 'simulated agents could not start');
    process.exit(EXIT_FAILURE);
  }
  // One line an operator (or a scale test's harness) can wait for, with every address.
  logger.info(
    {
      agents: simulator.agents.length,
      addresses: simulator.agents.map((a) => `${a.name}=${a.advertisedAddress}`),
    },
    'simulation running',
  );
}

/** `--sim-join-tokens FILE`: one token per line (blank lines and surrounding spaces ignored), one per agent. */
function readJoinTokens(file: string, count: number): string[] {
  const tokens = readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
  if (tokens.length !== count) {
    throw new Error(
      `--sim-join-tokens ${file} holds ${tokens.length} tokens for ${count} agents (one per agent)`,
    );
  }
  return tokens;
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isMain()) void runSimulatorCli();
