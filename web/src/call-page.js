// The door's call page (door/call_page.py serves it; scripts/setup bundles this file with livekit-client into
// door/static/call-page.js). One call at a time: pick a target, fill its context variables, mint through the
// door's Feather route, join the room, publish the microphone, play the agent, and show what the worker
// publishes about the call (worker/call_status.py: `voice_worker.*` attributes of the agent participant).
import {
  ConnectionState,
  Room,
  RoomEvent,
  Track,
  createAudioAnalyser,
  createLocalAudioTrack,
} from 'livekit-client';

const CONFIG_PATH = '/call-page/config';
const TRANSCRIPTION_TOPIC = 'lk.transcription';
const KEY_STORAGE = 'voice-worker-door-api-key';
// How long after joining the page waits for the agent before it says where to look.
const AGENT_JOIN_TIMEOUT_MS = 15000;
const METER_INTERVAL_MS = 50;
// The standard DTMF event codes (RFC 4733) livekit's SipDTMF packet carries beside the digit itself.
const DTMF_CODES = new Map([...'0123456789'].map((d) => [d, Number(d)]).concat([['*', 10], ['#', 11]]));
const KEY_FLASH_MS = 150;

const $ = (id) => document.getElementById(id);

const page = {
  config: null,
  room: null,
  mic: null,
  meters: new Map(),
  meterTimer: null,
  agentTimer: null,
  segments: new Map(),
  minted: null,
  agentMissing: false,
  // the call's keypad (null: its pipeline takes no digits) and the entry being keyed, grouped as the worker does
  keypad: null,
  keyEntry: null,
  keyEntries: 0,
  keyTimer: null,
  // each key is sent after the one before it: the agent must get them in the order they were pressed
  dtmfSent: Promise.resolve(),
};

const STATE_LABELS = {
  idle: 'Not connected',
  preparing: 'Opening the microphone…',
  minting: 'Asking the door for a call…',
  [ConnectionState.Connecting]: 'Connecting to LiveKit…',
  [ConnectionState.Connected]: 'Connected',
  [ConnectionState.Reconnecting]: 'Reconnecting…',
  [ConnectionState.SignalReconnecting]: 'Reconnecting…',
  [ConnectionState.Disconnected]: 'Call ended',
  failed: 'Not connected',
};

function setState(state, label) {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = label || STATE_LABELS[state] || state;
}

function showError(message) {
  const el = $('error');
  el.textContent = message;
  el.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function el(tag, props = {}, text) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- set-up: targets, variables, readiness -------------------------------------------------------------------

function targets() {
  const { agents, teams } = page.config;
  return [
    ...agents.map((a) => ({ ...a, kind: 'agent' })),
    ...teams.map((t) => ({ ...t, kind: 'team', context_variables: [] })),
  ];
}

function selectedTarget() {
  const value = $('target').value;
  return targets().find((t) => `${t.kind}:${t.id}` === value);
}

function renderTargets() {
  const select = $('target');
  select.replaceChildren();
  for (const [label, kind] of [['Agents', 'agent'], ['Teams', 'team']]) {
    const group = el('optgroup', { label });
    for (const t of targets().filter((x) => x.kind === kind)) {
      const suffix = t.enabled ? '' : ' (disabled)';
      group.append(el('option', { value: `${t.kind}:${t.id}` }, `${t.name}${suffix}`));
    }
    if (group.children.length) select.append(group);
  }
  renderTarget();
}

function variableInput(spec) {
  const id = `var-${spec.name}`;
  const row = el('div', { className: 'variable' });
  const label = el('label', { htmlFor: id }, `${spec.name} `);
  label.append(el('span', { className: 'hint' }, `(${spec.type})`));
  row.append(label);
  let input;
  const fallback = spec.default === null || spec.default === undefined ? '' : String(spec.default);
  if (spec.type === 'enum' || spec.type === 'bool') {
    input = el('select', { id, name: spec.name });
    input.append(el('option', { value: '' }, fallback ? `default (${fallback})` : 'not set'));
    const values = spec.type === 'enum' ? spec.enum_values : ['true', 'false'];
    for (const v of values) input.append(el('option', { value: v }, v));
  } else {
    input = el('input', { id, name: spec.name, type: spec.type === 'string' ? 'text' : 'number' });
    if (spec.type === 'int') input.step = '1';
    if (spec.type === 'float') input.step = 'any';
    if (spec.minimum !== null && spec.minimum !== undefined) input.min = String(spec.minimum);
    if (spec.maximum !== null && spec.maximum !== undefined) input.max = String(spec.maximum);
    if (spec.max_length) input.maxLength = spec.max_length;
    if (fallback) input.placeholder = `default: ${fallback}`;
  }
  input.dataset.type = spec.type;
  row.append(input);
  if (spec.description) {
    const hint = el('p', { className: 'hint', id: `${id}-hint` }, spec.description);
    input.setAttribute('aria-describedby', hint.id);
    row.append(hint);
  }
  return row;
}

function renderTarget() {
  const target = selectedTarget();
  const fields = $('variable-fields');
  fields.replaceChildren();
  if (!target) return;
  $('target-hint').textContent =
    target.kind === 'team'
      ? `Team members: ${target.members.join(', ')}. Team calls take no context variables.`
      : `Active revision: ${target.revision || 'unnamed'}.`;
  for (const spec of target.context_variables) fields.append(variableInput(spec));
  $('no-variables').hidden = target.context_variables.length > 0;
  $('variables').hidden = target.kind === 'team';

  const notice = $('readiness');
  notice.replaceChildren();
  const blockers = [];
  if (!target.enabled) blockers.push(el('p', {}, `This ${target.kind} is disabled in the catalog.`));
  if (target.missing_keys.length) {
    const p = el('p', {}, `This ${target.kind} cannot take a call yet: its providers need `);
    target.missing_keys.forEach((name, i) => {
      if (i) p.append(i === target.missing_keys.length - 1 ? ' and ' : ', ');
      p.append(el('code', {}, name));
    });
    p.append('. Set them in .env (or the environment) and restart voice-worker dev.');
    blockers.push(p);
  }
  for (const problem of target.problems) blockers.push(el('p', {}, `Pipeline problem: ${problem}`));
  notice.append(...blockers);
  notice.hidden = blockers.length === 0;
  $('start').disabled = blockers.length > 0;
}

function contextVariables() {
  const values = {};
  for (const input of $('variable-fields').querySelectorAll('input, select')) {
    const raw = input.value.trim();
    if (raw === '') continue;
    const type = input.dataset.type;
    if (type === 'int' || type === 'float') values[input.name] = Number(raw);
    else if (type === 'bool') values[input.name] = raw === 'true';
    else values[input.name] = raw;
  }
  return values;
}

// --- errors, in words a person can act on --------------------------------------------------------------------

function microphoneMessage(error) {
  const name = error && error.name;
  if (name === 'NotAllowedError' || name === 'SecurityError') {
    return 'The microphone is blocked for this page: allow it in the browser (the icon in the address bar) and start again.';
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') {
    return 'No microphone was found: connect one (or pick an input device in your system settings) and start again.';
  }
  if (name === 'NotReadableError') {
    return 'The microphone cannot be read: another program may be using it.';
  }
  return `The microphone could not be opened (${name || 'error'}: ${error && error.message}).`;
}

async function doorMessage(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    return `HTTP ${response.status}`;
  }
  const detail = body && body.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((e) => `${(e.loc || []).filter((p) => p !== 'body').join('.')}: ${e.msg}`)
      .join('; ');
  }
  if (body && body.error && body.error.message) return body.error.message;
  return `HTTP ${response.status}`;
}

// --- the call ------------------------------------------------------------------------------------------------

async function startCall(event) {
  event.preventDefault();
  clearError();
  const target = selectedTarget();
  if (!target || $('start').disabled) return;
  const apiKey = page.config.api_key || $('api-key').value.trim();
  if (!apiKey) {
    showError('Enter a door API key: this door only mints calls for configured keys.');
    $('api-key').focus();
    return;
  }
  if (!page.config.api_key) sessionStorage.setItem(KEY_STORAGE, apiKey);
  $('start').disabled = true;
  try {
    await placeCall(target, apiKey);
  } finally {
    if (!page.room) {
      $('start').disabled = false;
      setState('failed');
    }
  }
}

async function placeCall(target, apiKey) {
  page.keypad = target.dtmf_enabled ? target.dtmf_entry : null;
  // The microphone first: a person without one learns it before a session is minted for nothing.
  setState('preparing');
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError('This browser offers no microphone here: open the page over https or on localhost.');
    return;
  }
  let mic;
  try {
    mic = await createLocalAudioTrack({ echoCancellation: true, noiseSuppression: true, autoGainControl: true });
  } catch (error) {
    showError(microphoneMessage(error));
    return;
  }

  setState('minting');
  const body = target.kind === 'agent'
    ? { agent_id: target.id, context_variables: contextVariables() }
    : { team_id: target.id };
  let response;
  try {
    response = await fetch(page.config.web_call_path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
      body: JSON.stringify(body),
    });
  } catch (error) {
    mic.stop();
    showError(`The door did not answer (${error.message}). Is voice-worker dev still running?`);
    return;
  }
  if (!response.ok) {
    mic.stop();
    showError(`The door refused the call (HTTP ${response.status}): ${await doorMessage(response)}`);
    return;
  }
  const minted = await response.json();

  const room = new Room({ adaptiveStream: false, dynacast: false });
  wireRoom(room);
  try {
    await room.connect(minted.livekit_url, minted.access_token);
  } catch (error) {
    mic.stop();
    room.removeAllListeners();
    showError(
      `LiveKit is unreachable at ${minted.livekit_url} (${error.message || error}). ` +
        'Start it (voice-worker dev starts one) or check LIVEKIT_URL / DOOR_PUBLIC_LIVEKIT_URL.',
    );
    return;
  }
  page.room = room;
  page.mic = mic;
  page.minted = minted;
  await room.localParticipant.publishTrack(mic, { source: Track.Source.Microphone });
  room.startAudio().catch(() => {});
  addMeter('caller-level', mic);
  showCall(minted);
  for (const participant of room.remoteParticipants.values()) onParticipant(participant);
  page.agentTimer = setTimeout(() => {
    if (![...room.remoteParticipants.values()].some((p) => p.isAgent)) {
      page.agentMissing = true;
      showError(
        'No agent joined the call. Is the worker running and registered with this LiveKit server? ' +
          "Its log says why it refused a dispatch (for example a provider key it is missing).",
      );
    }
  }, AGENT_JOIN_TIMEOUT_MS);
}

function wireRoom(room) {
  room
    .on(RoomEvent.ConnectionStateChanged, (state) => {
      setState(state);
      renderKeypad();
    })
    .on(RoomEvent.ParticipantConnected, onParticipant)
    .on(RoomEvent.ParticipantAttributesChanged, (_changed, participant) => onParticipant(participant))
    .on(RoomEvent.TrackSubscribed, (track, _publication, participant) => {
      if (track.kind !== Track.Kind.Audio) return;
      // An attached element plays the agent; Chrome also feeds a remote stream to WebAudio only while it plays.
      $('audio').append(track.attach());
      if (participant.isAgent) addMeter('agent-level', track);
    })
    .on(RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((node) => node.remove()))
    .on(RoomEvent.AudioPlaybackStatusChanged, () => {
      // the browser's autoplay policy: playing needs a click of its own once the first one has expired
      $('play-audio').hidden = room.canPlaybackAudio;
    })
    .on(RoomEvent.Disconnected, () => endCall());
  room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, participantInfo) => {
    readTranscript(room, reader, participantInfo).catch(() => {});
  });
}

function onParticipant(participant) {
  if (!participant.isAgent) return;
  clearTimeout(page.agentTimer);
  // a slow start (a worker in dev mode starts a process per call) is not a failure once the agent is here
  if (page.agentMissing) clearError();
  page.agentMissing = false;
  renderStatus(participant.attributes || {});
}

// --- live panels ---------------------------------------------------------------------------------------------

async function readTranscript(room, reader, participantInfo) {
  const attributes = reader.info.attributes || {};
  const segment = attributes['lk.segment_id'] || reader.info.id;
  const role = participantInfo.identity === room.localParticipant.identity ? 'caller' : 'agent';
  const item = transcriptItem(segment, role, role === 'caller' ? 'You' : 'Agent');
  // Each stream carries the segment's whole text (the caller's interim and final transcripts are one stream
  // each; the agent's speech is one stream of deltas), so the latest stream's text is the segment's text.
  let text = '';
  for await (const chunk of reader) {
    text += chunk;
    item.text.textContent = text;
  }
  const final = (reader.info.attributes || attributes)['lk.transcription_final'];
  item.node.dataset.final = role === 'agent' || final === 'true' ? 'true' : 'false';
  const list = $('transcript');
  list.scrollTop = list.scrollHeight;
}

function transcriptItem(segment, role, who) {
  let item = page.segments.get(segment);
  if (!item) {
    const node = el('li');
    node.dataset.role = role;
    node.dataset.final = 'false';
    node.append(el('span', { className: 'who' }, who));
    const text = el('span', { className: 'text' });
    node.append(text);
    $('transcript').append(node);
    item = { node, text };
    page.segments.set(segment, item);
  }
  return item;
}

function parse(value) {
  if (!value) return null;
  try {
    return JSON.parse(value);
  } catch {
    return null;
  }
}

function fmt(ms) {
  return ms === null || ms === undefined ? '–' : String(Math.round(ms));
}

// procedures/supervisor.py's DecisionReason, in words
const REASONS = {
  keyword: 'a keyword matched',
  router: 'chosen by the router',
  always_on: 'the always-on procedure',
  router_none: 'the router chose none: fallback',
  router_error: 'the router failed: fallback',
  router_timeout: 'the router timed out: fallback',
  no_procedures: 'the revision has no procedures',
};

function renderStatus(attributes) {
  $('agent-state').textContent = attributes['lk.agent.state'] ? `· ${attributes['lk.agent.state']}` : '';
  const call = parse(attributes['voice_worker.call']);
  if (call) {
    const rows = [['Agent', call.agent], ['Revision', call.revision], ['Team', call.team], ['Session', call.session_type]];
    for (const [name, value] of Object.entries(call.context_variables || {})) rows.push([name, JSON.stringify(value)]);
    $('context').replaceChildren(
      ...rows.filter(([, v]) => v !== null && v !== undefined).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]),
    );
  }
  const procedure = parse(attributes['voice_worker.procedure']);
  if (procedure) {
    const p = $('procedure');
    p.replaceChildren(el('strong', {}, procedure.name || 'none (the revision\'s own behaviour)'));
    p.append(el('span', { className: 'hint' }, ` — ${REASONS[procedure.reason] || procedure.reason}`));
    if (procedure.router_latency_ms !== null) {
      p.append(el('span', { className: 'hint' }, ` (router ${fmt(procedure.router_latency_ms)} ms)`));
    }
    p.dataset.filled = 'true';
    p.dataset.procedure = procedure.name || '';
  }
  const turns = parse(attributes['voice_worker.turns']);
  if (turns) {
    const body = $('latency').tBodies[0];
    body.replaceChildren(
      ...turns.map((t) => {
        const tr = el('tr');
        tr.append(
          el('td', {}, t.turn === 0 ? 'greeting' : String(t.turn)),
          el('td', {}, fmt(t.end_of_speech_to_first_audio_ms)),
          el('td', {}, fmt(t.llm_ttft_ms)),
          el('td', {}, fmt(t.tts_ttfb_ms)),
        );
        return tr;
      }),
    );
    $('latency').dataset.turns = String(turns.filter((t) => t.end_of_speech_to_first_audio_ms !== null).length);
  }
}

function addMeter(id, track) {
  if (page.meters.has(id)) page.meters.get(id).cleanup().catch(() => {});
  page.meters.set(id, createAudioAnalyser(track, { cloneTrack: true }));
  if (!page.meterTimer) {
    page.meterTimer = setInterval(() => {
      for (const [meterId, analyser] of page.meters) {
        const level = analyser.calculateVolume();
        const meter = $(meterId);
        meter.value = level;
        if (level > Number(meter.dataset.peak)) meter.dataset.peak = level.toFixed(4);
      }
    }, METER_INTERVAL_MS);
  }
}

function stopMeters() {
  clearInterval(page.meterTimer);
  page.meterTimer = null;
  for (const analyser of page.meters.values()) analyser.cleanup().catch(() => {});
  page.meters.clear();
}

// --- the keypad ----------------------------------------------------------------------------------------------

function renderKeypad() {
  const room = page.room;
  $('keypad-panel').hidden = !(page.keypad && room && room.state === ConnectionState.Connected);
}

function pressKey(digit) {
  const room = page.room;
  if (!page.keypad || !room || room.state !== ConnectionState.Connected || !DTMF_CODES.has(digit)) return;
  const button = $('keypad').querySelector(`button[data-digit="${digit}"]`);
  button.dataset.active = 'true';
  clearTimeout(button.flash);
  button.flash = setTimeout(() => delete button.dataset.active, KEY_FLASH_MS);
  page.dtmfSent = page.dtmfSent
    .then(() => room.localParticipant.publishDtmf(DTMF_CODES.get(digit), digit))
    .catch((error) => showError(`The key ${digit} did not reach the call (${error.message || error}).`));
  showKey(digit);
}

// The worker (pipelines/dtmf.py) makes one user turn of the keys up to the termination digit, the maximum count,
// or a pause of the inter-digit timeout; the page shows the same entry as one line, final when the turn is sent.
function showKey(digit) {
  const rules = page.keypad;
  if (!page.keyEntry) {
    page.keyEntries += 1;
    page.keyEntry = transcriptItem(`keypad-${page.keyEntries}`, 'caller', 'You · keypad');
    page.keyEntry.node.dataset.kind = 'keypad';
    page.keyEntry.count = 0;
  }
  const entry = page.keyEntry;
  entry.text.textContent += digit;
  const terminated = Boolean(rules.termination_digit) && digit === rules.termination_digit;
  if (!terminated) entry.count += 1;
  clearTimeout(page.keyTimer);
  if (terminated || entry.count >= rules.max_digits) endKeyEntry();
  else page.keyTimer = setTimeout(endKeyEntry, rules.inter_digit_timeout_ms);
  const list = $('transcript');
  list.scrollTop = list.scrollHeight;
}

function endKeyEntry() {
  clearTimeout(page.keyTimer);
  page.keyTimer = null;
  if (page.keyEntry) page.keyEntry.node.dataset.final = 'true';
  page.keyEntry = null;
}

function onKeypadKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || !DTMF_CODES.has(event.key)) return;
  event.preventDefault();
  pressKey(event.key);
}

function onKeypadClick(event) {
  const button = event.target.closest('button[data-digit]');
  if (button) pressKey(button.dataset.digit);
}

// --- call controls -------------------------------------------------------------------------------------------

function showCall(minted) {
  $('setup').hidden = true;
  $('call').hidden = false;
  $('live').hidden = false;
  $('mute').hidden = false;
  $('hangup').hidden = false;
  $('new-call').hidden = true;
  $('session').textContent = `Session ${minted.session_id} · room ${minted.room_name}`;
  renderKeypad();
  $('hangup').focus();
}

async function toggleMute() {
  if (!page.mic) return;
  const muted = !page.mic.isMuted;
  if (muted) await page.mic.mute();
  else await page.mic.unmute();
  $('mute').setAttribute('aria-pressed', String(muted));
  $('mute').textContent = muted ? 'Unmute' : 'Mute';
  if (page.room) page.room.startAudio().catch(() => {});
}

async function hangUp() {
  if (page.room) await page.room.disconnect();
  endCall();
}

function endCall() {
  if (!page.room && !page.mic) return;
  clearTimeout(page.agentTimer);
  stopMeters();
  if (page.mic) page.mic.stop();
  page.mic = null;
  page.room = null;
  // keys still being collected when the call ends never reach the agent: that entry stays unfinished
  clearTimeout(page.keyTimer);
  page.keyEntry = null;
  renderKeypad();
  setState(ConnectionState.Disconnected);
  $('mute').hidden = true;
  $('hangup').hidden = true;
  $('play-audio').hidden = true;
  $('new-call').hidden = false;
  if (page.minted) $('session').textContent = `Call ended · session ${page.minted.session_id} (recorded by the worker)`;
  $('audio').replaceChildren();
  $('new-call').focus();
}

function newCall() {
  clearError();
  page.segments.clear();
  page.keypad = null;
  $('transcript').replaceChildren();
  $('context').replaceChildren();
  $('procedure').textContent = 'Chosen on the caller\'s first turn.';
  $('procedure').dataset.filled = 'false';
  $('latency').tBodies[0].replaceChildren();
  $('latency').dataset.turns = '0';
  for (const id of ['caller-level', 'agent-level']) {
    $(id).value = 0;
    $(id).dataset.peak = '0';
  }
  $('call').hidden = true;
  $('live').hidden = true;
  $('setup').hidden = false;
  $('start').disabled = false;
  renderTarget();
  setState('idle');
  $('target').focus();
}

// --- start-up ------------------------------------------------------------------------------------------------

async function boot() {
  $('boot-error').hidden = true;
  let response;
  try {
    response = await fetch(CONFIG_PATH, { headers: { accept: 'application/json' } });
  } catch (error) {
    showError(`The door did not answer (${error.message}).`);
    return;
  }
  if (!response.ok) {
    showError(`The door could not list its agents (HTTP ${response.status}).`);
    return;
  }
  page.config = await response.json();
  if (!page.config.agents.length && !page.config.teams.length) {
    showError('The catalog has no agents or teams: check CATALOG_PATH (voice-worker check lists its problems).');
    return;
  }
  $('api-key-row').hidden = Boolean(page.config.api_key);
  if (!page.config.api_key) $('api-key').value = sessionStorage.getItem(KEY_STORAGE) || '';
  renderTargets();
  $('target').addEventListener('change', renderTarget);
  $('setup').addEventListener('submit', startCall);
  $('mute').addEventListener('click', toggleMute);
  $('hangup').addEventListener('click', hangUp);
  $('new-call').addEventListener('click', newCall);
  $('keypad').addEventListener('click', onKeypadClick);
  $('keypad').addEventListener('keydown', onKeypadKey);
  $('play-audio').addEventListener('click', () => {
    if (page.room) page.room.startAudio().then(() => { $('play-audio').hidden = true; }).catch(() => {});
  });
  window.addEventListener('beforeunload', () => page.room && page.room.disconnect());
  $('setup').hidden = false;
  setState('idle');
}

boot();
