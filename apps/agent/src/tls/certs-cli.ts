#!/usr/bin/env node
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  createClusterCa,
  describeCert,
  type IssuedCert,
  issueControlPlaneCert,
  issueHostCert,
} from './certs.js';

const USAGE = `Usage: gen-certs <command> [options]

Makes the cluster's mTLS certificates with openssl.

  ca --dir DIR [--days N] [--force]
      Creates the cluster CA (DIR/ca.crt, DIR/ca.key). Keep ca.key off the hypervisor hosts.
  host --ca-dir DIR --name HOST --out DIR [--ip IP]... [--dns NAME]... [--days N]
      Issues OUT/HOST.crt and OUT/HOST.key for one agent (CN and DNS subjectAltName = HOST,
      IP 127.0.0.1 unless --ip is given) and copies ca.crt next to them. Agent config:
      "tls": {"ca": "OUT/ca.crt", "cert": "OUT/HOST.crt", "key": "OUT/HOST.key"}.
  control-plane --ca-dir DIR --out DIR [--ip IP]... [--dns NAME]... [--days N]
      Issues OUT/control-plane.crt and .key for the api's AgentGateway
      (default DNS localhost, IP 127.0.0.1: name every address agents dial).
`;

/**
 * Runs one certificate command (`ca`, `host`, `control-plane`) and returns the exit code. Used by
 * scripts/gen-certs.sh; the agent's main can expose it as `hangar-agent certs`.
 */
export async function runCertsCommand(
  argv: string[],
  out: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    out(USAGE);
    return command ? 0 : 2;
  }
  const { values } = parseArgs({
    args: rest,
    strict: true,
    options: {
      dir: { type: 'string' },
      'ca-dir': { type: 'string' },
      name: { type: 'string' },
      out: { type: 'string' },
      ip: { type: 'string', multiple: true },
      dns: { type: 'string', multiple: true },
      days: { type: 'string' },
      force: { type: 'boolean', default: false },
    },
  });
  const days = values.days === undefined ? undefined : Number.parseInt(values.days, 10);
  if (days !== undefined && !(Number.isInteger(days) && days > 0))
    throw new Error('--days must be a positive integer');
  const need = (key: 'dir' | 'ca-dir' | 'name' | 'out'): string => {
    const v = values[key];
    if (!v) throw new Error(`${command} needs --${key}`);
    return v;
  };
  const print = async (issued: IssuedCert) => {
    const d = await describeCert(issued.cert);
    out(
      `certificate ${issued.cert}\n  key ${issued.key}\n  ca ${issued.ca}\n  subject ${d.subject}\n  san ${d.san}`,
    );
  };
  switch (command) {
    case 'ca': {
      const ca = await createClusterCa(need('dir'), { days, force: values.force });
      out(`cluster CA ${ca.cert}\n  key ${ca.key} (keep it off the hypervisor hosts)`);
      return 0;
    }
    case 'host':
      await print(
        await issueHostCert(need('ca-dir'), need('name'), need('out'), {
          days,
          ips: values.ip,
          dnsNames: values.dns,
        }),
      );
      return 0;
    case 'control-plane':
      await print(
        await issueControlPlaneCert(need('ca-dir'), need('out'), {
          days,
          ips: values.ip,
          dnsNames: values.dns,
        }),
      );
      return 0;
    default:
      out(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
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

if (isMain()) {
  runCertsCommand(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`gen-certs: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
