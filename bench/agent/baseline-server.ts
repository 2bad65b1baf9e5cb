/**
 * The GetVm baseline of bench/agent: a bare grpc-js server in its own process that answers
 * `hangar.agent.v1.HostAgent/GetVm` with one fixed response held in memory (the agent's own
 * answer for the same VM, captured by the bench). No validation, no runtime, no QMP: the latency
 * ratio agent ÷ baseline is what the agent adds on top of grpc-js and the loopback hop.
 *
 * Usage: node bench/agent/dist/baseline-server.js RESPONSE_FILE (prints `listening HOST:PORT`).
 */
import { readFileSync } from 'node:fs';
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: baseline-server.js RESPONSE_FILE\n');
  process.exit(2);
}
const response = agentv1.GetVmResponse.decode(readFileSync(file));
const server = new Server();
server.addService(agentv1.HostAgentService, {
  getVm: (
    _call: ServerUnaryCall<agentv1.GetVmRequest, agentv1.GetVmResponse>,
    cb: sendUnaryData<agentv1.GetVmResponse>,
  ) => cb(null, response),
});
server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    process.stderr.write(`baseline-server: ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`listening 127.0.0.1:${port}\n`);
});
const stop = () => server.tryShutdown(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
