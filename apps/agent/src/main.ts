#!/usr/bin/env node
import { Agent, controlSessionFactory } from './agent.js';
import { type AgentConfig, loadAgentConfig } from './config/agent-config.js';
import { createLogger } from './log.js';
import { wantsSimulation } from './sim/flags.js';

/** Exit codes: 0 stopped on a signal, 1 failed while running, 2 bad configuration. */
const EXIT_FAILURE = 1;
const EXIT_BAD_CONFIG = 2;

/**
 * `hangar-agent`: loads the configuration once (file, env, flags), starts the agent and stops it
 * on SIGTERM/SIGINT. Stopping never touches guests: they keep running and the next agent
 * re-adopts them. `hangar-agent --simulate N …` runs N simulated agents instead (src/sim).
 */
async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (wantsSimulation(argv)) {
    // Loaded only when asked for: a production agent never pulls in the simulator.
    const { runSimulatorCli } = await import('./sim/main.js');
    await runSimulatorCli(argv);
    return;
  }
  let config: AgentConfig;
  try {
    config = loadAgentConfig(argv);
  } catch (err) {
    process.stderr.write(`hangar-agent: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(EXIT_BAD_CONFIG);
  }
  const logger = createLogger({ level: config.logLevel, base: { host: config.hostName } });
  const agent = new Agent({ config, logger, sessionFactory: controlSessionFactory });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal while stopping; exiting now (guests keep running)');
      process.exit(EXIT_FAILURE);
    }
    stopping = true;
    logger.info({ signal }, 'signal received');
    agent.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'agent stop failed');
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    await agent.start();
  } catch (err) {
    logger.fatal({ err }, 'agent could not start');
    process.exit(EXIT_FAILURE);
  }
}

void main();
