import net from 'node:net';

/**
 * Runs commands in the test guest's root shell on its second serial port (spec.debugShell).
 * Each command is framed with a unique end marker that carries the exit code.
 */
export class GuestShell {
  private buffer = '';
  private seq = 0;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      if (process.env.HANGAR_DEBUG_SHELL) process.stderr.write(`[shell<] ${JSON.stringify(chunk)}\n`);
    });
  }

  static async connect(socketPath: string): Promise<GuestShell> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const shell = new GuestShell(socket);
    await shell.waitResponsive();
    return shell;
  }

  /**
   * Input that reaches the serial port before the guest's shell has opened it is dropped, so
   * probe until the shell answers before sending real commands.
   */
  private async waitResponsive(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const id = `${Date.now().toString(36)}${this.seq++}`;
      this.socket.write(`\necho __HANGAR_PONG_$((40+2))_${id}__\n`);
      const until = Date.now() + 700;
      while (Date.now() < until) {
        if (this.buffer.includes(`__HANGAR_PONG_42_${id}__`)) {
          this.buffer = '';
          return;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
      if (Date.now() > deadline) {
        this.socket.destroy();
        throw new Error(`guest shell did not answer within ${timeoutMs} ms: ${this.buffer.slice(-500)}`);
      }
    }
  }

  /** Runs `command` and returns its output; rejects on a non-zero exit or timeout. */
  async run(command: string, timeoutMs = 20_000): Promise<string> {
    const id = `${Date.now().toString(36)}${this.seq++}`;
    // The markers are computed by the shell ($((40+2))), so the tty's echo of the typed line never
    // matches them; only the shell's output does. No quotes: a dropped character cannot leave
    // the shell inside an unterminated string.
    const start = `__HANGAR_START_42_${id}__`;
    const end = `__HANGAR_END_42_${id}__`;
    this.buffer = '';
    this.socket.write(
      `echo __HANGAR_START_$((40+2))_${id}__; ${command}; echo __HANGAR_END_$((40+2))_${id}__ $?\n`,
    );
    const deadline = Date.now() + timeoutMs;
    const re = new RegExp(`${start}\\r?\\n([\\s\\S]*?)${end} (\\d+)`);
    for (;;) {
      const m = re.exec(this.buffer);
      if (m) {
        const out = (m[1] ?? '').replace(/\r/g, '');
        const code = Number(m[2]);
        if (code !== 0) throw new Error(`guest command failed (${code}): ${command}\n${out}`);
        return out;
      }
      if (Date.now() > deadline) throw new Error(`guest command timed out: ${command}\n${this.buffer}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
