export * from './host-network.js';
export {
  assertIfname,
  assertNetnsName,
  findLink,
  type IpLink,
  listLinks,
  listNetns,
  NETNS_NAME_PATTERN,
  type NetnsOption,
  runIp,
} from './ip.js';
export * from './netns.js';
