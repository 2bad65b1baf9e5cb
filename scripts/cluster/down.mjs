// The work of `scripts/down.sh`: stops what scripts/up.sh started under $HANGAR_DATA_DIR/cluster/,
// by the pids it recorded. First the local agent's guests, through the REST api (graceful stop,
// then forced), unless --keep-guests; then the agent (which leaves guests alone), the worker and
// the api. Guests that still run afterwards are listed, never killed (docs/adr/0040).
// Usage: node scripts/cluster/down.mjs [--keep-guests]
import { parseArgs } from 'node:util';
import {
  apiClient,
  describeProblem,
  isRunning,
  listAll,
  log,
  openDatabase,
  paths,
  readState,
  removePidFile,
  runningGuests,
  shown,
  sleep,
  stopPid,
  waitOperation,
  withSetupKey,
  writeState,
} from './lib.mjs';

const { values: opts } = parseArgs({
  options: { 'keep-guests': { type: 'boolean', default: false } },
  strict: true,
});

/** States in which a guest's QEMU runs (or may run, while its host is unreachable). */
const POWERED = new Set(['RUNNING', 'PAUSED', 'UNKNOWN', 'MIGRATING']);

/**
 * Stops one VM through the api: a graceful stop (ACPI power button), forced when that fails or
 * times out. Actions already in flight on the VM (409 OPERATION_IN_PROGRESS) are waited out.
 * Returns the VM's status afterwards.
 */
async function stopVm(api, vm) {
  for (const force of [false, true]) {
    const deadline = Date.now() + 60_000;
    let res = await api('POST', `/v1/vms/${vm.id}/stop`, { force });
    while (res.status === 409 && res.body?.code === 'OPERATION_IN_PROGRESS' && Date.now() < deadline) {
      await sleep(500);
      res = await api('POST', `/v1/vms/${vm.id}/stop`, { force });
    }
    if (res.status === 202) {
      const op = await waitOperation(api, res.headers.get('location'), force ? 30_000 : 60_000);
      if (op.status === 'SUCCEEDED') return 'STOPPED';
      log(
        `  ${vm.name}: ${force ? 'forced' : 'graceful'} stop ${op.status} ${op.error ? JSON.stringify(op.error) : ''}`,
      );
    } else {
      const now = (await api('GET', `/v1/vms/${vm.id}`)).body;
      if (now?.status === 'STOPPED') return 'STOPPED';
      log(`  ${vm.name}: ${force ? 'forced' : 'graceful'} stop refused: ${describeProblem(res)}`);
    }
  }
  return (await api('GET', `/v1/vms/${vm.id}`)).body?.status ?? 'unknown';
}

/** Stops every powered VM of the local host through the api; returns how many. */
async function stopGuests(state) {
  const prisma = await openDatabase(state.databaseUrl);
  try {
    const host = await prisma.host.findUnique({ where: { name: state.hostName } });
    const project = await prisma.project.findUnique({ where: { name: 'default' } });
    if (!host || !project) return 0;
    return await withSetupKey(prisma, project.id, async (key) => {
      const api = apiClient(state.url, key);
      const vms = (await listAll(api, `/v1/vms?host_id=${host.id}`)).filter((vm) => POWERED.has(vm.status));
      if (vms.length === 0) return 0;
      log(
        `stopping ${vms.length} guest(s) of host ${host.name} through the api: ${vms.map((v) => v.name).join(', ')}`,
      );
      const results = await Promise.all(vms.map(async (vm) => [vm, await stopVm(api, vm)]));
      for (const [vm, status] of results) log(`  ${vm.name} (${vm.id}): ${status}`);
      log('they stay STOPPED until started again (POST /v1/vms/{id}/start)');
      return vms.length;
    });
  } finally {
    await prisma.$disconnect();
  }
}

async function main() {
  const state = await readState();
  const running = Object.fromEntries(
    ['api', 'worker', 'agent'].map((role) => [role, isRunning(role, state.processes[role])]),
  );
  const runtimeDir = state.runtimeDir ?? paths.runtime;

  if (!opts['keep-guests'] && runningGuests(runtimeDir).length > 0) {
    const missing = Object.entries(running)
      .filter(([, up]) => !up)
      .map(([role]) => role);
    if (missing.length > 0) {
      log(`cannot stop guests through the api: ${missing.join(', ')} not running`);
    } else {
      try {
        await stopGuests(state);
      } catch (error) {
        log(
          `stopping guests through the api failed: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }
  }

  // The agent first: it stops without touching guests; then the worker, then the api.
  for (const role of /** @type {const} */ (['agent', 'worker', 'api'])) {
    const record = state.processes[role];
    if (record && running[role]) {
      const how = await stopPid(record.pid, record.startTime, 20_000);
      log(
        how === 'kill'
          ? `${role} (pid ${record.pid}) did not stop on SIGTERM within 20 s: killed`
          : `stopped ${role} (pid ${record.pid})`,
      );
    } else if (record) {
      log(`${role} (pid ${record.pid}) was not running any more`);
    }
    state.processes[role] = undefined;
    await removePidFile(role);
    await writeState(state);
  }

  const left = runningGuests(runtimeDir);
  if (left.length > 0) {
    log(
      `${left.length} guest(s) keep running: ${left.map((g) => `${g.vmId} (QEMU pid ${g.pid})`).join(', ')}. ` +
        `The next bash scripts/demo.sh re-adopts them; their files are under ${shown(runtimeDir)}.`,
    );
  }
}

try {
  await main();
} catch (error) {
  process.stderr.write(`down: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
