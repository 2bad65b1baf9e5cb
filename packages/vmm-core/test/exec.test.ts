import { describe, expect, it } from 'vitest';
import { isVmmError, VmmError } from '../src/errors.js';
import { runCommand } from '../src/util/exec.js';

const node = process.execPath;

async function failure(promise: Promise<unknown>): Promise<VmmError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VmmError) return err;
    throw err;
  }
  throw new Error('expected the command to fail');
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('runCommand', () => {
  it('returns stdout and stderr of a successful command', async () => {
    const result = await runCommand(node, ['-e', "process.stdout.write('out'); process.stderr.write('err')"]);
    expect(result).toEqual({ stdout: 'out', stderr: 'err' });
  });

  it('passes arguments verbatim, without a shell', async () => {
    const tricky = ['$HOME', 'a b', '; rm -rf /', '"quoted"', '*'];
    const { stdout } = await runCommand(node, [
      '-e',
      'console.log(JSON.stringify(process.argv.slice(1)))',
      ...tricky,
    ]);
    expect(JSON.parse(stdout)).toEqual(tricky);
  });

  it('writes input to stdin', async () => {
    const { stdout } = await runCommand('cat', [], { input: 'line one\nline two\n' });
    expect(stdout).toBe('line one\nline two\n');
  });

  it('merges env over the parent environment', async () => {
    const { stdout } = await runCommand('env', [], { env: { HANGAR_EXEC_TEST: 'yes' } });
    expect(stdout).toContain('HANGAR_EXEC_TEST=yes\n');
    expect(stdout).toContain(`PATH=${process.env.PATH}\n`);
  });

  it('fails with COMMAND_FAILED naming the command, exit code and trimmed stderr', async () => {
    const err = await failure(
      runCommand(node, ['-e', "process.stderr.write('\\n  disk on fire  \\n\\n'); process.exit(3)"]),
    );
    expect(err.code).toBe('COMMAND_FAILED');
    expect(err.message).toBe('node exited with code 3: disk on fire');
    expect(err.details).toMatchObject({ file: node, exitCode: 3, stderr: 'disk on fire' });
    expect(err.details?.args).toEqual([
      '-e',
      "process.stderr.write('\\n  disk on fire  \\n\\n'); process.exit(3)",
    ]);
  });

  it('fails with COMMAND_FAILED when the command does not exist', async () => {
    const err = await failure(runCommand('hangar-no-such-command', ['x']));
    expect(err.code).toBe('COMMAND_FAILED');
    expect(err.message).toContain('hangar-no-such-command');
    expect(err.message).toContain('not found');
  });

  it('reports a child killed by a signal', async () => {
    const err = await failure(runCommand(node, ['-e', "process.kill(process.pid, 'SIGTERM')"]));
    expect(err.code).toBe('COMMAND_FAILED');
    expect(err.message).toContain('SIGTERM');
    expect(err.details).toMatchObject({ exitCode: null, signal: 'SIGTERM' });
  });

  it('kills the child and fails with TIMEOUT when it runs too long', async () => {
    const started = Date.now();
    const err = await failure(runCommand(node, ['-e', 'setInterval(() => {}, 1000)'], { timeoutMs: 300 }));
    expect(isVmmError(err, 'TIMEOUT')).toBe(true);
    expect(err.message).toContain('300 ms');
    expect(Date.now() - started).toBeLessThan(5_000);
    const pid = err.details?.pid;
    expect(typeof pid).toBe('number');
    expect(isAlive(pid as number)).toBe(false);
  });

  it('kills a child that ignores SIGTERM', async () => {
    const err = await failure(
      runCommand(node, ['-e', "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)"], {
        timeoutMs: 300,
      }),
    );
    expect(err.code).toBe('TIMEOUT');
    expect(isAlive(err.details?.pid as number)).toBe(false);
  });

  it('fails when output exceeds maxOutputBytes', async () => {
    const err = await failure(
      runCommand(node, ['-e', "process.stdout.write('x'.repeat(10000))"], { maxOutputBytes: 1000 }),
    );
    expect(err.code).toBe('COMMAND_FAILED');
    expect(err.message).toContain('more than 1000 bytes');
  });
});
