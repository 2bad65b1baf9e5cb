/** The flags only simulation mode reads; everything else is the agent's own configuration. */
export interface SimulationFlags {
  /** `--simulate N`: how many agents. */
  count: number;
  /** `--sim-prefix P` (default `sim-`). */
  prefix: string | undefined;
  /** `--sim-first-index K` (default 0). */
  firstIndex: number | undefined;
  /** `--sim-ca-dir DIR`: issue each agent its own certificate from this cluster CA. */
  caDir: string | undefined;
  /** `--sim-stagger-ms MS` (default: the heartbeat interval). */
  staggerMs: number | undefined;
  /** `--sim-join-tokens FILE`: one join token per line, the k-th for the k-th agent. */
  joinTokensFile: string | undefined;
}

const SIM_FLAGS = new Set([
  '--simulate',
  '--sim-prefix',
  '--sim-first-index',
  '--sim-ca-dir',
  '--sim-stagger-ms',
  '--sim-join-tokens',
]);

/** True when `argv` asks for simulation mode (`--simulate N` or `--simulate=N`). */
export function wantsSimulation(argv: readonly string[]): boolean {
  return argv.some((a) => a === '--simulate' || a.startsWith('--simulate='));
}

/**
 * Splits simulation flags from the agent's configuration flags, which go to `loadAgentConfig`
 * unchanged (its schema is strict and would refuse `--simulate`).
 */
export function splitSimulationFlags(argv: readonly string[]): { flags: SimulationFlags; rest: string[] } {
  const values = new Map<string, string>();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [key, inline] = arg.split('=', 2) as [string, string | undefined];
    if (!SIM_FLAGS.has(key)) {
      rest.push(arg);
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined || value.startsWith('--')) throw new Error(`${key} needs a value`);
    values.set(key, value);
  }
  const int = (key: string, min: number): number | undefined => {
    const v = values.get(key);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < min)
      throw new Error(`${key} must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  const count = int('--simulate', 1);
  if (count === undefined) throw new Error('--simulate N is required');
  return {
    flags: {
      count,
      prefix: values.get('--sim-prefix'),
      firstIndex: int('--sim-first-index', 0),
      caDir: values.get('--sim-ca-dir'),
      staggerMs: int('--sim-stagger-ms', 0),
      joinTokensFile: values.get('--sim-join-tokens'),
    },
    rest,
  };
}
