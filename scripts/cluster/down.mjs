// The work of `scripts/down.sh`: stops what scripts/up.sh started under $HANGAR_DATA_DIR/cluster/,
// by the pids it recorded. First the guests, through the REST api (graceful stop, then forced),
// unless --keep-guests; then the agents (which leave guests alone), the worker and the api; then
// processes of this cluster a killed run started without recording them (found by their
// environment mark). One host: guests that still run afterwards are listed, never killed
// (docs/adr/0040). Several hosts (docs/adr/0044): the hosts themselves go away — guests the api
// could not stop are killed by their QEMU pid files, then the namespaces, veths and bridge are
// removed — unless --keep-guests, which keeps hosts and guests for the next up to re-adopt.
// --sweep is for a cluster whose run was killed: no api calls, everything goes.
// Usage: node scripts/cluster/down.mjs [--keep-guests] [--sweep]
import { parseArgs } from 'node:util';
import {
  destroyFabric,
  fabricResources,
  fabricTag,
  forgetFabric,
  namespaceName,
  readFabric,
  withFabricLock,
} from './hosts.mjs';
import {
  apiClient,
  clusterDir,
  describeProblem,
  hostRuntimeDir,
  isAgentRole,
  isRunning,
  listAll,
  log,
  markedProcesses,
  openDatabase,
  paths,
  procStartTime,
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
  options: {
    'keep-guests': { type: 'boolean', default: false },
    sweep: { type: 'boolean', default: false },
  },
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

/** Stops every powered VM of the cluster's hosts through the api; returns how many. */
async function stopGuests(state, hostNames) {
  const prisma = await openDatabase(state.databaseUrl);
  try {
    const hosts = await prisma.host.findMany({ where: { name: { in: hostNames } } });
    const project = await prisma.project.findUnique({ where: { name: 'default' } });
    if (hosts.length === 0 || !project) return 0;
    return await withSetupKey(prisma, project.id, async (key) => {
      const api = apiClient(state.url, key);
      let count = 0;
      for (const host of hosts) {
        const vms = (await listAll(api, `/v1/vms?host_id=${host.id}`)).filter((vm) => POWERED.has(vm.status));
        if (vms.length === 0) continue;
        log(
          `stopping ${vms.length} guest(s) of host ${host.name} through the api: ${vms.map((v) => v.name).join(', ')}`,
        );
        const results = await Promise.all(vms.map(async (vm) => [vm, await stopVm(api, vm)]));
        for (const [vm, status] of results) log(`  ${vm.name} (${vm.id}): ${status}`);
        count += vms.length;
      }
      if (count > 0) log('they stay STOPPED until started again (POST /v1/vms/{id}/start)');
      return count;
    });
  } finally {
    await prisma.$disconnect();
  }
}

/**
 * The hosts of a multi-host cluster, from every record that may be left: the fabric file, the
 * agents in the state file, and the namespaces named after the cluster's tag.
 */
function multiHostNames(state, fabric, resources) {
  const names = new Set(fabric?.hosts.map((h) => h.name) ?? []);
  for (const role of Object.keys(state.processes)) if (role.startsWith('agent-')) names.add(role.slice(6));
  for (const ns of resources.namespaces) {
    const index = /-h(\d+)$/.exec(ns)?.[1];
    if (index !== undefined) names.add(`host${index}`);
  }
  return [...names].sort();
}

async function main() {
  const state = await readState();
  const fabric = await readFabric(paths.fabric);
  const tag = fabricTag(clusterDir);
  // Without iproute2 there is no namespace to remove either.
  const resources = await fabricResources(tag).catch(() => ({ namespaces: [], links: [] }));
  const multi =
    fabric !== undefined ||
    (state.hostCount ?? 1) > 1 ||
    resources.namespaces.length > 0 ||
    resources.links.length > 0;
  const hostNames = multi ? multiHostNames(state, fabric, resources) : [];
  const agentRoles = Object.keys(state.processes).filter(isAgentRole);
  if (!multi && !agentRoles.includes('agent')) agentRoles.push('agent');
  const roles = ['api', 'worker', ...agentRoles];
  const running = Object.fromEntries(roles.map((role) => [role, isRunning(role, state.processes[role])]));
  const runtimeDirs = multi ? hostNames.map(hostRuntimeDir) : [state.runtimeDir ?? paths.runtime];
  const guests = () => runtimeDirs.flatMap((dir) => runningGuests(dir));

  if (!opts['keep-guests'] && !opts.sweep && guests().length > 0) {
    const missing = Object.entries(running)
      .filter(([, up]) => !up)
      .map(([role]) => role);
    if (missing.length > 0) {
      log(`cannot stop guests through the api: ${missing.join(', ')} not running`);
    } else {
      try {
        await stopGuests(state, multi ? hostNames : [state.hostName]);
      } catch (error) {
        log(
          `stopping guests through the api failed: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }
  }

  // The agents first: they stop without touching guests; then the worker, then the api.
  for (const role of [...agentRoles, 'worker', 'api']) {
    const record = state.processes[role];
    if (record && running[role]) {
      const how = await stopPid(record.pid, record.startTime, opts.sweep ? 2_000 : 20_000);
      log(
        how === 'kill'
          ? `${role} (pid ${record.pid}) did not stop on SIGTERM within ${opts.sweep ? 2 : 20} s: killed`
          : `stopped ${role} (pid ${record.pid})`,
      );
    } else if (record) {
      log(`${role} (pid ${record.pid}) was not running any more`);
    }
    state.processes[role] = undefined;
    await removePidFile(role);
    await writeState(state);
  }
  // Started by a run that was killed before it could record them.
  for (const p of markedProcesses(clusterDir)) {
    const how = await stopPid(p.pid, p.startTime, 5_000);
    if (how !== 'gone') log(`stopped ${shown(p.entryPoint)} (pid ${p.pid}), which no pid file recorded`);
  }

  if (multi && !opts['keep-guests']) {
    // The hosts go away: what the api could not stop cannot outlive them.
    for (const dir of runtimeDirs) {
      for (const guest of runningGuests(dir)) {
        log(`killing guest ${guest.vmId} (QEMU pid ${guest.pid}): its host's namespace is removed`);
        const startTime = procStartTime(guest.pid);
        if (startTime !== undefined) await stopPid(guest.pid, startTime, 2_000);
      }
    }
    const removed = await withFabricLock(() => destroyFabric(tag));
    await forgetFabric(paths.fabric);
    state.hostCount = undefined;
    await writeState(state);
    if (removed.namespaces.length + removed.links.length > 0) {
      log(
        `removed the hosts' network: namespaces ${removed.namespaces.join(', ') || '(none)'}; links ${removed.links.join(', ') || '(none)'}`,
      );
    }
    return;
  }

  const left = guests();
  if (left.length > 0) {
    log(
      `${left.length} guest(s) keep running: ${left.map((g) => `${g.vmId} (QEMU pid ${g.pid})`).join(', ')}. ` +
        `The next bash scripts/demo.sh re-adopts them; their files are under ${runtimeDirs.map(shown).join(', ')}.`,
    );
  }
  if (multi) {
    log(
      `the hosts' namespaces stay (${hostNames.map((n) => namespaceName(tag, Number(n.slice(4)))).join(', ')}) for the next up`,
    );
  }
}

try {
  await main();
} catch (error) {
  process.stderr.write(`down: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
