#!/usr/bin/env node
// A Node gRPC client of arcp-gateway, on @grpc/grpc-js with the schema loaded at start-up from
// proto/arcp/v1/arcp.proto by @grpc/proto-loader, so it always matches this repository's.
//
// It opens a session, submits the built-in `ticker` agent, drops its stream on purpose after a
// few frames (the job keeps running on the gateway), resumes the session on a new stream with
// the welcome's resume token and the last `event_seq` it processed, and follows the job to its
// result. It exits 1 unless every job frame came once, with contiguous `event_seq`s, and the
// job succeeded; its last line of output is a JSON summary.
//
//     npm ci
//     node ticker_resume.js --target 127.0.0.1:50051 --token alice-token

'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');

function parseArgs(argv) {
  const args = { target: '127.0.0.1:50051', token: process.env.ARCP_TOKEN, count: 20, intervalMs: 50, dropAfter: 6 };
  const names = { '--target': 'target', '--token': 'token', '--count': 'count', '--interval-ms': 'intervalMs', '--drop-after': 'dropAfter' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (name === undefined || argv[i + 1] === undefined) {
      throw new Error(`usage: ticker_resume.js [--target HOST:PORT] --token TOKEN [--count N] [--interval-ms MS] [--drop-after FRAMES] (at ${argv[i]})`);
    }
    args[name] = typeof args[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.token) {
    throw new Error('--token (or ARCP_TOKEN) is required');
  }
  return args;
}

function loadArcp() {
  const definition = protoLoader.loadSync('arcp/v1/arcp.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).arcp.v1;
}

// The frames of one stream, read one at a time with `next()`: `null` once the stream ended.
class Frames {
  constructor(call) {
    this.queue = [];
    this.waiting = [];
    this.done = false;
    this.failure = null;
    call.on('data', (frame) => this.push(frame));
    call.on('end', () => this.finish(null));
    call.on('error', (error) => this.finish(error));
  }

  push(frame) {
    const waiter = this.waiting.shift();
    if (waiter) {
      waiter.resolve(frame);
    } else {
      this.queue.push(frame);
    }
  }

  finish(error) {
    this.done = true;
    this.failure = this.failure || error;
    for (const waiter of this.waiting.splice(0)) {
      this.settle(waiter);
    }
  }

  settle(waiter) {
    if (this.failure) {
      waiter.reject(this.failure);
    } else {
      waiter.resolve(null);
    }
  }

  next() {
    return new Promise((resolve, reject) => {
      if (this.queue.length > 0) {
        resolve(this.queue.shift());
      } else if (this.done) {
        this.settle({ resolve, reject });
      } else {
        this.waiting.push({ resolve, reject });
      }
    });
  }
}

function hello(token, resume) {
  return {
    id: 'hello',
    session_hello: {
      client: { name: 'ticker-resume-node-example', version: '1.0' },
      auth: { scheme: 'bearer', token },
      capabilities: { features: ['progress'] },
      resume: resume || null,
    },
  };
}

// A new stream of the session, its hello (or resume) sent and its welcome read.
async function open(client, token, resume) {
  const call = client.Session();
  const frames = new Frames(call);
  call.write(hello(token, resume));
  const welcome = await frames.next();
  if (!welcome || welcome.payload !== 'session_welcome') {
    throw new Error(`expected session_welcome, got ${JSON.stringify(welcome)}`);
  }
  return { call, frames, welcome };
}

// A google.protobuf.Value as plain JSON. The well-known types come from protobufjs's own copy of
// struct.proto, whose fields are camelCase whatever `keepCase` says.
function fromValue(value) {
  if (!value) {
    return null;
  }
  switch (value.kind) {
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return Object.fromEntries(Object.entries(value.structValue.fields || {}).map(([k, v]) => [k, fromValue(v)]));
    case 'listValue': return (value.listValue.values || []).map(fromValue);
    default: return null;
  }
}

function numbers(object) {
  return { structValue: { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, { numberValue: v }])) } };
}

// Records a job frame, once: a repeat or a frame past a gap is noted for the summary.
function record(seen, frame) {
  if (frame.event_seq === 0) {
    return;
  }
  seen.push(frame.event_seq);
  if (frame.payload === 'job_event' && frame.job_event.body === 'progress') {
    const p = frame.job_event.progress;
    console.log(`progress ${p.current}/${p.total} (event_seq ${frame.event_seq})`);
  }
}

async function run(args) {
  const arcp = loadArcp();
  const client = new arcp.Arcp(args.target, grpc.credentials.createInsecure());
  const first = await open(client, args.token, null);
  const sessionId = first.welcome.session_id;
  console.log(`session ${sessionId} opened`);
  first.call.write({ id: 'submit-1', job_submit: { agent: 'ticker', input: numbers({ count: args.count, interval_ms: args.intervalMs }) } });

  const seen = [];
  let jobId = null;
  while (seen.length < args.dropAfter) {
    const frame = await first.frames.next();
    if (frame === null) {
      throw new Error('the stream ended before the drop');
    }
    if (frame.payload === 'job_accepted') {
      jobId = frame.job_accepted.job_id;
      console.log(`job ${jobId} accepted`);
    } else if (frame.payload === 'session_error') {
      throw new Error(`the gateway refused: ${JSON.stringify(frame.session_error)}`);
    }
    record(seen, frame);
  }
  const last = seen[seen.length - 1];
  console.log(`dropping the stream after event_seq ${last}`);
  first.call.cancel();
  // The job keeps running on the gateway meanwhile; what it emits is replayed on the resume.
  await new Promise((resolve) => setTimeout(resolve, args.intervalMs * 4));

  const resume = { session_id: sessionId, resume_token: first.welcome.session_welcome.resume_token, last_event_seq: last };
  const second = await open(client, args.token, resume);
  console.log(`session ${second.welcome.session_id} resumed after event_seq ${last}`);
  let end = null;
  while (end === null) {
    const frame = await second.frames.next();
    if (frame === null) {
      throw new Error('the resumed stream ended before the job did');
    }
    record(seen, frame);
    if ((frame.payload === 'job_result' || frame.payload === 'job_error') && frame.job_id === jobId) {
      end = frame;
    }
  }
  second.call.cancel();
  client.close();

  const outcome = end.payload === 'job_result' ? end.job_result : end.job_error;
  const result = end.payload === 'job_result' ? fromValue(end.job_result.result) : null;
  const contiguous = seen.every((seq, i) => seq === seen[0] + i);
  const once = new Set(seen).size === seen.length;
  const summary = {
    same_session: second.welcome.session_id === sessionId,
    token_rotated: second.welcome.session_welcome.resume_token !== first.welcome.session_welcome.resume_token,
    dropped_after: last,
    event_seqs: seen,
    gap_free: contiguous && once && seen[0] === 1,
    final_status: outcome.final_status,
    result,
  };
  console.log(`result ${JSON.stringify(result)}`);
  console.log(JSON.stringify(summary));
  return summary.gap_free && summary.same_session && summary.final_status === 'success' ? 0 : 1;
}

run(parseArgs(process.argv.slice(2))).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`ticker_resume: ${error.message}`);
    process.exit(1);
  },
);
