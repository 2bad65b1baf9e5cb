import { spawn } from 'node:child_process';
import { basename } from 'node:path';
import { VmmError } from '../errors.js';

/** Options of {@link runCommand}. */
export interface RunCommandOptions {
  /** Kill the child (SIGKILL) and fail with `TIMEOUT` after this many milliseconds. No limit when absent. */
  timeoutMs?: number;
  /** Written to the child's stdin, which is then closed. Without it stdin is `/dev/null`. */
  input?: string | Uint8Array;
  /** Variables merged over `process.env` for the child. */
  env?: Record<string, string>;
  /** Largest stdout or stderr kept, in bytes (default 64 MiB); more fails the command. */
  maxOutputBytes?: number;
}

/** What a successful command printed. */
export interface CommandResult {
  stdout: string;
  stderr: string;
}

const DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

/**
 * Runs `file` with an argument array (never through a shell) and resolves with its output when it
 * exits with status 0.
 *
 * @throws VmmError `COMMAND_FAILED` when the command cannot start, exits non-zero, dies by a signal
 *   or prints more than `maxOutputBytes`; `details` holds `{file, args, exitCode, signal, stderr}`.
 * @throws VmmError `TIMEOUT` when `timeoutMs` elapses; the child has been killed by then.
 */
export function runCommand(
  file: string,
  args: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  const { timeoutMs, input, env } = options;
  const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const name = basename(file);
  const argv = [...args];

  return new Promise<CommandResult>((resolve, reject) => {
    const child = spawn(file, argv, {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: env === undefined ? process.env : { ...process.env, ...env },
    });

    const stdoutChunks: Buffer[] = [];
    const stderrChunks: Buffer[] = [];
    let stdoutBytes = 0;
    let stderrBytes = 0;
    let settled = false;
    let failure: VmmError | undefined;
    let timer: NodeJS.Timeout | undefined;

    const stderrText = (): string => Buffer.concat(stderrChunks).toString('utf8');

    const settle = (err: VmmError | undefined, result?: CommandResult): void => {
      if (settled) return;
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      if (err !== undefined) reject(err);
      else if (result !== undefined) resolve(result);
    };

    // A runaway child is killed at once; its exit (not the close of its pipes, which a grandchild
    // may still hold) then settles the promise.
    const abort = (err: VmmError): void => {
      if (failure !== undefined) return;
      failure = err;
      child.kill('SIGKILL');
    };

    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        abort(
          new VmmError('TIMEOUT', `${name} did not finish within ${timeoutMs} ms and was killed`, {
            details: { file, args: argv, timeoutMs, pid: child.pid },
          }),
        );
      }, timeoutMs);
    }

    child.stdout?.on('data', (chunk: Buffer) => {
      stdoutBytes += chunk.length;
      if (stdoutBytes > maxOutputBytes) {
        abort(outputTooLarge(file, argv, 'stdout', maxOutputBytes));
        return;
      }
      stdoutChunks.push(chunk);
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderrBytes += chunk.length;
      if (stderrBytes > maxOutputBytes) {
        abort(outputTooLarge(file, argv, 'stderr', maxOutputBytes));
        return;
      }
      stderrChunks.push(chunk);
    });

    child.on('error', (err: NodeJS.ErrnoException) => {
      const reason = err.code === 'ENOENT' ? 'command not found' : err.message;
      settle(
        new VmmError('COMMAND_FAILED', `${name} could not be started: ${reason}`, {
          cause: err,
          details: { file, args: argv, exitCode: null, signal: null, stderr: '' },
        }),
      );
    });

    child.on('exit', () => {
      if (failure !== undefined) settle(failure);
    });

    child.on('close', (exitCode: number | null, signal: NodeJS.Signals | null) => {
      if (failure !== undefined) {
        settle(failure);
        return;
      }
      const stderr = stderrText();
      if (exitCode === 0) {
        settle(undefined, { stdout: Buffer.concat(stdoutChunks).toString('utf8'), stderr });
        return;
      }
      const trimmed = stderr.trim();
      const status =
        exitCode === null ? `was killed by ${signal ?? 'a signal'}` : `exited with code ${exitCode}`;
      settle(
        new VmmError('COMMAND_FAILED', `${name} ${status}${trimmed === '' ? '' : `: ${trimmed}`}`, {
          details: { file, args: argv, exitCode, signal, stderr: trimmed },
        }),
      );
    });

    if (input !== undefined && child.stdin !== null) {
      // A child that exits without reading its stdin makes the write fail with EPIPE; its exit
      // status is what matters.
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
  });
}

function outputTooLarge(file: string, args: string[], stream: string, limit: number): VmmError {
  return new VmmError('COMMAND_FAILED', `${basename(file)} printed more than ${limit} bytes on ${stream}`, {
    details: { file, args, exitCode: null, signal: 'SIGKILL', stderr: '' },
  });
}
