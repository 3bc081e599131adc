/* search-app browser UI. No build step: plain ES2020, loaded with `defer`.
 *
 * Talks to the app only through its public API: POST /api/search (Server-Sent Events,
 * read from fetch's body stream because EventSource cannot POST), GET /api/search/{id},
 * /api/threads/{id}, /api/history and /api/info; uploads go to POST /api/documents and
 * collections are listed and deleted through /api/collections. See docs/ui.md.
 *
 * Security rule: text from a model or a page never reaches innerHTML unsanitized. Markdown
 * goes through marked (raw HTML escaped, images turned into text) and then DOMPurify
 * (allow-list, http(s) links only); everything else is set with textContent.
 */
'use strict';
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const body = document.body;
  // With API keys, the page carries its session's CSRF token: state-changing requests
  // that ride on the session cookie must send it back (search_app/access.py).
  const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || '';
  const csrfHeader = () => (CSRF ? { 'X-CSRF-Token': CSRF } : {});
  const CITE = /\[citation:(\d+)\]/g;
  const MARK = /\uE000(\d+)\uE001/g; // citation placeholders between markdown and chips
  const IDLE_MS = 30000; // the server pings every 5 s: this much silence is a dead line
  const ERRORS = {
    search_failed: 'The search provider is down or not answering.',
    no_results: 'The search found nothing for this question.',
    model_unavailable: 'The model is unavailable (still loading, or it failed to load).',
    model_timeout: 'The model did not start answering in time.',
    model_error: 'The model failed while answering.',
    model_crashed: 'The model crashed while answering; it is restarting. Try again in a few seconds.',
    rate_limited: 'Too many questions in a short time.',
    authentication_error: 'The session has expired; reload the page to sign in again.',
    permission_error: 'The page is out of date; reload it and ask again.',
    dropped: 'The connection to the app was lost.',
    not_found: 'Not found.',
    store_failed: 'The answer could not be stored.',
  };

  const state = { threadId: null, turns: [], busy: null, filters: { recency: '', sites: [], mode: '' } };
  const els = {
    home: $('#home'), thread: $('#thread'), ask: $('#ask'), q: $('#q'), follow: $('#follow'),
    fq: $('#fq'), provider: $('#provider'), pop: $('#pop'), announce: $('#announce'),
    when: $('#when'), site: $('#site'), research: $('#research'),
    history: $('#history'), historyList: $('#history-list'), theme: $('#theme'),
    tpl: $('#turn-tpl'),
  };
  const docs = { box: $('#docs'), list: $('#doc-list'), file: $('#doc-file'), pick: $('#doc-pick'),
    name: $('#doc-collection'), web: $('#doc-web'), status: $('#doc-status'), chosen: new Set() };

  // ------------------------------------------------------------------ markdown, safely
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => (
    { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  window.marked.use({
    gfm: true,
    renderer: {
      html: (token) => escapeHtml(token.text || token.raw || ''), // raw HTML shown as text
      // Remote images would leak the question to a third party: never loaded.
      image: (token) => escapeHtml(`[image: ${token.text || token.title || 'not loaded'}]`),
    },
  });
  const PURIFY = {
    ALLOWED_TAGS: ['p', 'br', 'strong', 'em', 'del', 'code', 'pre', 'blockquote', 'ul', 'ol',
      'li', 'a', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'table', 'thead', 'tbody', 'tr', 'th',
      'td', 'hr'],
    ALLOWED_ATTR: ['href', 'title', 'start', 'align'],
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  };
  const safeUrl = (url) => {
    try {
      const u = new URL(url, location.href);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch (e) { return null; }
  };
  const external = (a, url) => {
    a.href = url; a.target = '_blank'; a.rel = 'noopener noreferrer';
  };
  window.DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node.nodeName !== 'A') return;
    const url = safeUrl(node.getAttribute('href') || '');
    if (url) external(node, url); else node.removeAttribute('href');
  });

  const el = (tag, cls, text) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const siteOf = (s) => (s.site || '').replace(/^www\./, '') || 'source';

  // ------------------------------------------------------------------------- turns
  function newTurn(query, opts = {}) {
    const node = els.tpl.content.firstElementChild.cloneNode(true);
    const turn = {
      query, node, text: '', sources: [], unsupported: [], quotes: [], related: [], searchId: null,
      threadId: null, askThread: opts.askThread === undefined ? state.threadId : opts.askThread,
      provider: opts.provider || null, finished: false, ctl: null, timers: [],
    };
    const q = (s) => node.querySelector(s);
    Object.assign(turn, {
      stage: q('.stage'), stageText: q('.stage-text'), sourcesBox: q('.sources'),
      cards: q('.cards'), answerBox: q('.answer-box'), answer: q('.answer'),
      error: q('.error'), errorText: q('.error-text'), timings: q('.timings'),
      relatedBox: q('.related'), relatedList: q('.related ul'),
      withheldBox: q('.withheld'), withheldCount: q('.withheld-count'),
      withheldList: q('.withheld-list'), withheldBtn: q('[data-act="withheld"]'),
    });
    q('.q').textContent = query;
    for (const b of els.thread.querySelectorAll('[data-act="regen"]')) b.hidden = true; // last only
    node.dataset.turn = String(state.turns.length);
    state.turns.push(turn);
    els.thread.append(node);
    body.classList.add('chat');
    els.follow.hidden = false;
    return turn;
  }

  function resetTurn(turn) {
    Object.assign(turn, { text: '', sources: [], unsupported: [], quotes: [], related: [], finished: false,
      stopped: false, dropped: false, failed: false, searchId: null, sourcesSeen: false });
    clearTimers(turn);
    turn.stage.classList.remove('idle');
    turn.cards.replaceChildren(); turn.answer.replaceChildren();
    turn.relatedList.replaceChildren(); turn.timings.textContent = '';
    turn.node.querySelector('.plan').replaceChildren();
    turn.node.querySelector('.plan-box').hidden = true;
    renderWithheld(turn, []);
    turn.sourcesBox.hidden = true; turn.answerBox.hidden = true; turn.relatedBox.hidden = true;
    turn.error.hidden = true; turn.stage.hidden = false; turn.stageText.textContent = 'Searching…';
    turn.node.setAttribute('aria-busy', 'true');
    for (const b of turn.node.querySelectorAll('.actions [data-act]')) b.hidden = b.dataset.act !== 'stop';
  }

  function setStage(turn, text) { turn.stage.hidden = false; turn.stageText.textContent = text; }

  function startStages(turn, searchQuery) {
    // Live: the search event starts it, then stage events (read, rank), then sources.
    setStage(turn, `Searching${searchQuery ? ` for “${searchQuery}”` : ''}…`);
  }
  const STAGE_TEXT = { read: 'Reading', rank: 'Ranking', plan: 'Planning the research:', step: 'Researching' };
  const clearTimers = (turn) => { turn.timers.forEach(clearTimeout); turn.timers = []; };

  // --------------------------------------------------------------------- rendering
  function renderSources(turn, data) {
    turn.sources = data.sources || [];
    turn.sourcesSeen = true;
    turn.sourcesBox.hidden = false;
    turn.cards.replaceChildren();
    if (!turn.sources.length) {
      const li = el('li', 'none', data.relevant === false
        ? 'No source was close enough to the question.' : ERRORS.no_results);
      turn.cards.append(li);
    }
    for (const s of turn.sources) {
      const li = el('li');
      const url = safeUrl(s.url);
      const a = el(url ? 'a' : 'span', 'card');
      if (url) external(a, url);
      a.title = s.snippet || '';
      const site = siteOf(s);
      const badge = el('span', `badge b${hash(site) % 6}`, site[0].toUpperCase());
      badge.setAttribute('aria-hidden', 'true');
      const text = el('span', 'card-text');
      text.append(el('span', 'card-title', s.title || site), el('span', 'card-site', `${s.number} · ${site}`));
      a.append(badge, text);
      li.append(a);
      turn.cards.append(li);
    }
  }

  function hash(s) { let h = 0; for (const c of s) h = (h * 31 + c.charCodeAt(0)) >>> 0; return h; }

  let frame = 0;
  function scheduleRender(turn) {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; renderAnswer(turn); });
  }

  function renderAnswer(turn) {
    turn.answerBox.hidden = false;
    const md = turn.text.replace(CITE, '\uE000$1\uE001');
    const frag = window.DOMPurify.sanitize(window.marked.parse(md), PURIFY);
    markQuotes(frag, turn);
    addChips(frag, turn);
    markUnsupported(frag, turn);
    patch(turn.answer, frag);
  }

  // Replace only the blocks that changed, so the live region announces new text, not
  // the whole answer again on every sentence.
  function patch(container, frag) {
    const old = [...container.childNodes];
    const neu = [...frag.childNodes];
    let i = 0;
    while (i < old.length && i < neu.length && old[i].isEqualNode(neu[i])) i += 1;
    old.slice(i).forEach((n) => n.remove());
    container.append(...neu.slice(i));
  }

  function textNodes(root) {
    const out = [];
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) out.push(walker.currentNode);
    return out;
  }

  function addChips(root, turn) {
    for (const node of textNodes(root)) {
      const text = node.nodeValue;
      if (!text.includes('\uE000')) continue;
      const parts = [];
      let last = 0;
      for (const m of text.matchAll(MARK)) {
        parts.push(document.createTextNode(text.slice(last, m.index)), chip(turn, Number(m[1])));
        last = m.index + m[0].length;
      }
      parts.push(document.createTextNode(text.slice(last)));
      node.replaceWith(...parts);
    }
  }

  function chip(turn, n) {
    const source = turn.sources[n - 1];
    const url = source && safeUrl(source.url);
    const c = el(url ? 'a' : 'span', 'cite', String(n));
    c.dataset.n = String(n);
    if (url) external(c, url); else c.tabIndex = 0;
    c.setAttribute('aria-label', source ? `Source ${n}: ${source.title}` : `Source ${n}`);
    return c;
  }

  const plain = (s) => s.replace(CITE, '').replace(/[*_`#>]/g, '').replace(/\s+/g, ' ').trim();

  // The lead (quote events): the block quotes that hold a source's own words are marked
  // as such, so the reader tells them from the model's sentences that follow.
  function markQuotes(root, turn) {
    if (!turn.quotes.length) return;
    const heads = turn.quotes.map((q) => plain(q.text).slice(0, 40));
    for (const bq of root.querySelectorAll('blockquote')) {
      const text = plain(bq.textContent.replace(/[\uE000\uE001]/g, ' '));
      if (!heads.some((h) => h && text.startsWith(h))) continue;
      bq.classList.add('lead');
      bq.prepend(el('span', 'lead-label', 'From the sources'));
    }
  }

  function markUnsupported(root, turn) {
    for (const sentence of turn.unsupported) {
      const want = plain(sentence);
      if (want.length < 8) continue;
      const head = want.slice(0, Math.min(want.length, 60));
      for (const node of textNodes(root)) {
        const at = node.nodeValue.indexOf(head);
        if (at < 0 || node.parentNode.closest?.('.unsupported')) continue;
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, Math.min(node.nodeValue.length, at + want.length));
        const span = el('span', 'unsupported');
        span.title = 'Not supported by the cited source';
        span.tabIndex = 0;
        range.surroundContents(span);
        span.append(el('span', 'sr', ' (not supported by the cited source)'));
        break;
      }
    }
  }

  // Strict grounding: sentences that failed the support check never reach the answer
  // text; the support event lists them, and the reader may look at them, marked.
  function renderWithheld(turn, sentences) {
    turn.withheldBox.hidden = !sentences.length;
    turn.withheldList.hidden = true;
    turn.withheldBtn.setAttribute('aria-expanded', 'false');
    turn.withheldBtn.textContent = 'Show them';
    const n = sentences.length;
    turn.withheldCount.textContent = `${n} unsupported sentence${n === 1 ? '' : 's'} withheld.`;
    turn.withheldList.replaceChildren();
    for (const s of sentences) {
      const li = el('li', null, s.sentence);
      li.append(el('span', 'tag', 'not supported by the sources'));
      turn.withheldList.append(li);
    }
  }

  function toggleWithheld(turn) {
    const open = turn.withheldList.hidden;
    turn.withheldList.hidden = !open;
    turn.withheldBtn.setAttribute('aria-expanded', String(open));
    turn.withheldBtn.textContent = open ? 'Hide them' : 'Show them';
  }

  function renderRelated(turn, questions) {
    turn.related = questions || [];
    turn.relatedList.replaceChildren();
    for (const q of turn.related) {
      const li = el('li');
      const b = el('button', 'rel-q', q);
      b.type = 'button';
      b.dataset.q = q;
      li.append(b);
      turn.relatedList.append(li);
    }
    turn.relatedBox.hidden = !turn.related.length;
  }

  const secs = (ms) => (ms == null ? '–' : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);
  function renderTimings(turn, t) {
    const parts = [`search ${secs(t.search_ms)}`, `read ${secs(t.read_ms)}`, `rank ${secs(t.rank_ms)}`,
      `first token ${secs(t.ttft_ms)}`, `total ${secs(t.total_ms)}`];
    if (t.fallbacks && t.fallbacks.length) parts.push(`fell back: ${t.fallbacks.join(', ')}`);
    turn.timings.textContent = parts.join(' · ');
  }

  function showError(turn, code, message) {
    turn.failed = true;
    clearTimers(turn);
    turn.stage.hidden = true;
    turn.error.hidden = false;
    turn.error.dataset.code = code;
    const head = ERRORS[code] || 'Something went wrong.';
    turn.errorText.textContent = message && message !== head ? `${head} ${message}` : head;
  }

  // ----------------------------------------------------------------------- events
  function dispatch(turn, name, data) {
    switch (name) {
      case 'search':
        turn.searchId = data.search_id; turn.threadId = data.thread_id;
        if (data.filters) {
          const line = turn.node.querySelector('.turn-filters');
          line.textContent = `Filtered: ${data.filters}`;
          line.hidden = false;
        }
        if (!turn.replay) { clearTimers(turn); startStages(turn, data.search_query); }
        break;
      case 'stage':
        if (!turn.replay && data.stage === 'queued') {  // after the sources: the model is busy
          setStage(turn, `Waiting for the model: ${data.detail || 'queued'}…`);
        } else if (!turn.replay && data.stage === 'write') {  // research: one section at a time
          setStage(turn, `Writing section ${data.detail || ''}…`);
        } else if (!turn.replay && !turn.sourcesSeen && STAGE_TEXT[data.stage]) {
          setStage(turn, `${STAGE_TEXT[data.stage]} ${data.detail || ''}…`.replace(' …', '…'));
        }
        break;
      case 'plan': {  // research mode: the sub-questions, shown before the sources
        const list = turn.node.querySelector('.plan');
        list.replaceChildren(...(data.sub_questions || []).map((q) => el('li', null, q)));
        turn.node.querySelector('.plan-box').hidden = false;
        break;
      }
      case 'sources':
        clearTimers(turn);
        renderSources(turn, data);
        setStage(turn, 'Writing the answer…');
        break;
      case 'quote': turn.quotes.push(data); break;
      case 'delta':
        if (!turn.text) setStage(turn, 'Writing the answer…');
        turn.text += data.text;
        if (turn.replay) renderAnswer(turn); else scheduleRender(turn);
        break;
      case 'related': renderRelated(turn, data.questions); setStage(turn, 'Checking citations…'); break;
      case 'support':
        turn.unsupported = (data.sentences || []).filter((s) => !s.supported && !s.withheld)
          .map((s) => s.sentence);
        renderWithheld(turn, (data.sentences || []).filter((s) => s.withheld));
        renderAnswer(turn);
        break;
      case 'timings': renderTimings(turn, data); break;
      case 'done':
        turn.finished = true;
        turn.finish = data.finish_reason;
        if (turn.threadId) state.threadId = turn.threadId;
        if (data.finish_reason === 'length' || data.finish_reason === 'timeout') {
          turn.timings.textContent += ` · cut short (${data.finish_reason})`;
        }
        break;
      case 'error': showError(turn, data.code, data.message); break;
      default: break; // newer event kinds: ignored
    }
  }

  function parseBlock(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line[0] === ':') continue; // heartbeat comments
      const at = line.indexOf(':');
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
      if (field === 'event') name = value; else if (field === 'data') data.push(value);
    }
    return data.length ? [name, JSON.parse(data.join('\n'))] : null;
  }

  async function httpError(res) {
    let message = '';
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    const code = res.status === 429 ? 'rate_limited' : res.status === 503 ? 'model_unavailable'
      : res.status === 404 ? 'not_found' : res.status === 401 ? 'authentication_error'
      : res.status === 403 ? 'permission_error' : 'http';
    if (res.status === 429 && res.headers.get('Retry-After')) {
      message = `Retry in ${res.headers.get('Retry-After')} s.`;
    }
    return { code, message: message || `HTTP ${res.status}` };
  }

  async function run(turn) {
    resetTurn(turn);
    state.busy = turn;
    setBusy(true);
    startStages(turn, '');
    const ctl = new AbortController();
    turn.ctl = ctl;
    let idle = 0;
    const kick = () => {
      clearTimeout(idle);
      idle = setTimeout(() => { turn.dropped = true; ctl.abort(); }, IDLE_MS);
    };
    const req = { query: turn.query };
    if (turn.askThread) req.thread_id = turn.askThread;
    if (turn.provider) req.provider = turn.provider;
    if (state.filters.recency) req.search_recency_filter = state.filters.recency;
    if (state.filters.sites.length) req.search_domain_filter = state.filters.sites;
    if (state.filters.mode === 'research') req.mode = 'research';
    if (docs.chosen.size) {  // your documents: with the web, or (unchecked) alone
      req.collections = [...docs.chosen];
      if (docs.web && !docs.web.checked) req.web = false;
    }
    try {
      kick();
      const res = await fetch('/api/search', {
        method: 'POST', body: JSON.stringify(req), signal: ctl.signal, credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...csrfHeader() },
      });
      if (!res.ok) { const e = await httpError(res); showError(turn, e.code, e.message); return; }
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        kick();
        buf += value;
        let m;
        while ((m = /\r?\n\r?\n/.exec(buf))) {
          const event = parseBlock(buf.slice(0, m.index));
          buf = buf.slice(m.index + m[0].length);
          if (event) dispatch(turn, event[0], event[1]);
        }
      }
      if (!turn.finished && !turn.failed) {
        showError(turn, 'dropped', 'The stream ended before the answer was finished.');
      }
    } catch (e) {
      if (turn.stopped) { /* the user pressed Stop: shown in finishRun */ } else if (turn.dropped) {
        showError(turn, 'dropped', `Nothing arrived for ${IDLE_MS / 1000} s.`);
      } else {
        showError(turn, 'dropped', e && e.message ? `(${e.message})` : '');
      }
    } finally {
      clearTimeout(idle);
      finishRun(turn);
    }
  }

  function finishRun(turn) {
    clearTimers(turn);
    if (frame) { cancelAnimationFrame(frame); frame = 0; }
    if (turn.text) renderAnswer(turn);
    turn.node.setAttribute('aria-busy', 'false');
    if (turn.stopped) setStage(turn, 'Stopped.'); else if (!turn.failed) turn.stage.hidden = true;
    turn.stage.classList.toggle('idle', true);
    const act = (name) => turn.node.querySelector(`[data-act="${name}"]`);
    act('stop').hidden = true;
    const last = state.turns[state.turns.length - 1] === turn;
    act('regen').hidden = !last || turn.replay;
    act('copy').hidden = !turn.text;
    act('share').hidden = !(turn.finished && turn.searchId);
    if (turn.finished) showExport();
    if (state.busy === turn) state.busy = null;
    setBusy(false);
    if (turn.finished && !turn.replay && turn.threadId && location.pathname === '/') {
      history.replaceState(null, '', `/t/${encodeURIComponent(turn.threadId)}${filterQuery()}`);
    }
    if (!turn.replay) {
      els.announce.textContent = turn.finished ? 'Answer complete.' : turn.stopped ? 'Stopped.' : 'Answer failed.';
    }
  }

  function setBusy(busy) {
    for (const form of [els.ask, els.follow]) {
      const button = form.querySelector('button[type=submit]');
      button.disabled = busy;
    }
    body.classList.toggle('busy', busy);
  }

  function replay(record) {
    const turn = newTurn(record.query, { askThread: null });
    turn.replay = true;
    resetTurn(turn);
    for (const e of record.events) dispatch(turn, e.event, e.data);
    if (!record.events.length) { turn.text = record.answer; turn.finished = true; }
    turn.finished = true;
    state.threadId = record.thread_id;
    finishRun(turn);
    return turn;
  }

  // Export: the conversation as Markdown (footnotes), a plain download link. A share
  // page links the shared answer itself (/api/search/{id} opens with the share link;
  // /api/threads/{id} may not), until the visitor asks a follow-up of their own.
  function showExport() {
    const link = $('#export');
    const shareId = body.dataset.mode === 'share' && body.dataset.ident;
    const shared = shareId && state.turns.every((t) => t.replay);
    const path = shared ? `/api/search/${encodeURIComponent(shareId)}`
      : state.threadId ? `/api/threads/${encodeURIComponent(state.threadId)}` : null;
    if (!link || !path) return;
    link.href = `${path}?format=md`;
    link.hidden = false;
  }

  // ---------------------------------------------------------------------- filters
  // Time range and sites (Sonar's search controls) belong to the conversation: chosen
  // on the home page, kept for its follow-ups, and kept in the address bar (?recency=
  // &site=) so that a link (home, thread or share) searches the same way again.
  const RECENCY = ['hour', 'day', 'week', 'month', 'year'];
  const splitSites = (text) => String(text || '').split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
  function filterQuery() {
    const p = new URLSearchParams();
    if (state.filters.recency) p.set('recency', state.filters.recency);
    if (state.filters.sites.length) p.set('site', state.filters.sites.join(','));
    if (state.filters.mode) p.set('mode', state.filters.mode);
    const q = p.toString();
    return q ? `?${q}` : '';
  }
  function readFilterControls() {
    state.filters = { recency: els.when ? els.when.value : '', sites: splitSites(els.site && els.site.value),
      mode: els.research && els.research.checked ? 'research' : '' };
  }
  function filtersFromAddress() {
    const p = new URLSearchParams(location.search);
    const recency = p.get('recency') || '';
    state.filters = { recency: RECENCY.includes(recency) ? recency : '', sites: splitSites(p.getAll('site').join(',')),
      mode: p.get('mode') === 'research' ? 'research' : '' };
    if (els.when) els.when.value = state.filters.recency;
    if (els.research) els.research.checked = state.filters.mode === 'research';
    if (els.site) els.site.value = state.filters.sites.join(', ');
  }
  for (const control of [els.when, els.site, els.research]) {
    if (!control) continue;
    control.addEventListener('change', () => {
      readFilterControls();
      if (body.dataset.mode === 'home' && !state.turns.length) {
        history.replaceState(null, '', `/${filterQuery()}`);
      }
    });
  }

  // ---------------------------------------------------------------------- actions
  function ask(query, opts = {}) {
    const q = query.trim();
    if (!q || state.busy) return;
    const provider = els.provider && !els.provider.disabled && els.provider.selectedIndex > 0
      ? els.provider.value : null;
    if (!state.turns.length) readFilterControls(); // a new conversation takes the controls
    const turn = newTurn(q, { provider, ...opts });
    turn.node.querySelector('.q').scrollIntoView({ block: 'start', behavior: 'smooth' });
    run(turn);
  }

  async function copyText(text) {
    try { await navigator.clipboard.writeText(text); return true; } catch (e) {
      const area = el('textarea'); area.value = text; document.body.append(area); area.select();
      const ok = document.execCommand('copy'); area.remove(); return ok;
    }
  }

  function answerWithFootnotes(turn) {
    const text = turn.text.replace(CITE, '[$1]').trim();
    if (!turn.sources.length) return text;
    const notes = turn.sources.map((s) => `[${s.number}] ${s.title} - ${s.url}`);
    return `${text}\n\nSources:\n${notes.join('\n')}\n`;
  }

  async function flash(button, label) {
    const before = button.textContent;
    button.textContent = label;
    els.announce.textContent = label;
    setTimeout(() => { button.textContent = before; }, 2000);
  }

  els.thread.addEventListener('click', async (ev) => {
    const target = ev.target.closest('button');
    if (!target) return;
    const turn = state.turns[Number(target.closest('.turn').dataset.turn)];
    if (target.dataset.q) { ask(target.dataset.q); return; }
    switch (target.dataset.act) {
      case 'stop': turn.stopped = true; if (turn.ctl) turn.ctl.abort(); break;
      case 'retry': case 'regen':
        if (turn.reload) location.reload(); else if (!state.busy) { turn.replay = false; run(turn); }
        break;
      case 'copy': flash(target, await copyText(answerWithFootnotes(turn)) ? 'Copied' : 'Copy failed'); break;
      case 'withheld': toggleWithheld(turn); break;
      case 'share': {
        const url = `${location.origin}/s/${encodeURIComponent(turn.searchId)}${filterQuery()}`;
        target.dataset.url = url;
        flash(target, await copyText(url) ? 'Link copied' : url);
        break;
      }
      default: break;
    }
  });

  // Citation popover: hover or focus a chip to see its source.
  function showPop(chipEl) {
    const turn = state.turns[Number(chipEl.closest('.turn').dataset.turn)];
    const s = turn && turn.sources[Number(chipEl.dataset.n) - 1];
    if (!s) return;
    els.pop.replaceChildren(el('strong', 'pop-title', s.title), el('span', 'pop-site', siteOf(s)),
      el('span', 'pop-snippet', s.snippet || ''));
    els.pop.hidden = false;
    chipEl.setAttribute('aria-describedby', 'pop');
    const r = chipEl.getBoundingClientRect();
    const w = els.pop.offsetWidth;
    els.pop.style.left = `${Math.max(8, Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - w - 8))}px`;
    els.pop.style.top = `${window.scrollY + r.bottom + 6}px`;
  }
  function hidePop() {
    els.pop.hidden = true;
    for (const c of document.querySelectorAll('.cite[aria-describedby]')) c.removeAttribute('aria-describedby');
  }
  for (const kind of ['mouseover', 'focusin']) {
    els.thread.addEventListener(kind, (ev) => { const c = ev.target.closest('.cite'); if (c) showPop(c); });
  }
  for (const kind of ['mouseout', 'focusout']) {
    els.thread.addEventListener(kind, (ev) => { if (ev.target.closest('.cite')) hidePop(); });
  }

  // Forms: Enter asks, Shift+Enter is a new line.
  for (const [form, input, opts] of [[els.ask, els.q, { askThread: null }], [els.follow, els.fq, {}]]) {
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (state.busy) return;
      const value = input.value;
      input.value = '';
      grow(input);
      ask(value, form === els.ask ? opts : {});
      // The home box disappears with the conversation: keep keyboard users in a
      // sensible place, the follow-up box (the answer region announces the answer).
      if (form === els.ask) els.fq.focus({ preventScroll: true });
    });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
    });
    input.addEventListener('input', () => grow(input));
  }
  function grow(input) { input.style.height = 'auto'; input.style.height = `${Math.min(input.scrollHeight, 200)}px`; }

  els.home.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-q]');
    if (b) { ask(b.dataset.q, { askThread: null }); els.fq.focus({ preventScroll: true }); }
  });

  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    const typing = t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName);
    if (ev.key === '/' && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      ev.preventDefault();
      (body.classList.contains('chat') ? els.fq : els.q).focus();
    } else if (ev.key === 'Escape') {
      hidePop();
      if (state.busy && !els.history.open) { state.busy.stopped = true; state.busy.ctl.abort(); }
    }
  });

  // ---------------------------------------------------------------------- theme
  const media = window.matchMedia('(prefers-color-scheme: dark)');
  const effective = () => document.documentElement.dataset.theme || (media.matches ? 'dark' : 'light');
  const syncTheme = () => els.theme.setAttribute('aria-pressed', String(effective() === 'dark'));
  els.theme.addEventListener('click', () => {
    const next = effective() === 'dark' ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    // A cookie, so the server renders the page in this theme next time (no flash).
    document.cookie = `search_app_theme=${next}; path=/; max-age=31536000; samesite=lax`;
    syncTheme();
  });
  media.addEventListener('change', syncTheme);
  syncTheme();

  // ---------------------------------------------------------------------- history
  $('#history-btn').addEventListener('click', async () => {
    els.history.showModal();
    els.historyList.replaceChildren(el('li', 'none', 'Loading…'));
    try {
      const res = await fetch('/api/history?limit=50', { credentials: 'same-origin' });
      if (!res.ok) throw new Error((await httpError(res)).message);
      const threads = (await res.json()).threads;
      els.historyList.replaceChildren();
      if (!threads.length) els.historyList.append(el('li', 'none', 'No searches yet.'));
      for (const t of threads) {
        const li = el('li');
        const a = el('a', 'hist', t.title);
        a.href = `/t/${encodeURIComponent(t.thread_id)}`;
        const when = new Date(t.updated * 1000);
        li.append(a, el('span', 'hist-meta', `${when.toLocaleString()} · ${t.answers} answer${t.answers === 1 ? '' : 's'}`));
        els.historyList.append(li);
      }
    } catch (e) {
      els.historyList.replaceChildren(el('li', 'none', `Could not load the history: ${e.message}`));
    }
  });
  $('#history-close').addEventListener('click', () => els.history.close());

  // ---------------------------------------------------------- model state, page modes
  async function pollInfo() {
    try {
      const info = await (await fetch('/api/info')).json();
      $('#model').textContent = info.model || 'loading…';
      body.dataset.state = info.state;
      const note = $('#state-note');
      if (info.state === 'ready') { note.hidden = true; return; }
      if (info.state === 'failed') { note.textContent = 'The answer engine failed to start; see the server log.'; return; }
    } catch (e) { /* app restarting: try again */ }
    setTimeout(pollInfo, 3000);
  }
  if (body.dataset.state === 'loading') setTimeout(pollInfo, 3000);

  async function loadStored(url, many) {
    const holder = newTurn('Loading…', { askThread: null });
    holder.replay = true;
    holder.reload = true; // its Retry reloads the page
    resetTurn(holder);
    setStage(holder, 'Loading the stored answer…');
    try {
      const res = await fetch(url, { credentials: 'same-origin' });
      if (!res.ok) {
        const e = await httpError(res);
        showError(holder, e.code, e.code === 'not_found' ? 'This answer or conversation is not stored here.' : e.message);
        finishRun(holder);
        return;
      }
      const data = await res.json();
      holder.node.remove();
      state.turns.length = 0;
      for (const record of many ? data.answers : [data]) replay(record);
    } catch (e) {
      showError(holder, 'dropped', e.message);
      finishRun(holder);
    }
  }
  // ------------------------------------------------------------- your documents
  // Upload (button or drop anywhere on the page) into the named collection, list the
  // collections with their counts, choose which ones the next questions use.
  async function loadCollections() {
    if (!docs.box) return;
    let data;
    try {
      const res = await fetch('/api/collections', { credentials: 'same-origin' });
      if (!res.ok) return;
      data = await res.json();
    } catch (e) { return; }
    const names = new Set(data.collections.map((c) => c.name));
    for (const n of [...docs.chosen]) if (!names.has(n)) docs.chosen.delete(n);
    docs.list.replaceChildren();
    for (const c of data.collections) {
      const li = el('li');
      const label = el('label', 'toggle');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = docs.chosen.has(c.name);
      box.addEventListener('change', () => { if (box.checked) docs.chosen.add(c.name); else docs.chosen.delete(c.name); });
      label.append(box, ` ${c.name} (${c.documents})`);
      const del = el('button', 'btn ghost small', '×');
      del.type = 'button';
      del.title = `Delete the collection ${c.name} and its documents`;
      del.setAttribute('aria-label', del.title);
      del.addEventListener('click', () => deleteCollection(c.name));
      li.append(label, del);
      docs.list.append(li);
    }
  }
  async function deleteCollection(name) {
    if (!window.confirm(`Delete the collection "${name}" and all its documents?`)) return;
    const res = await fetch(`/api/collections/${encodeURIComponent(name)}`, {
      method: 'DELETE', credentials: 'same-origin', headers: csrfHeader() });
    docs.status.textContent = res.ok ? `Deleted ${name}.` : (await httpError(res)).message;
    await loadCollections();
  }
  async function upload(files) {
    const name = (docs.name.value || '').trim() || 'my-docs';
    docs.box.open = true;
    for (const file of files) {
      docs.status.textContent = `Uploading ${file.name}…`;
      const form = new FormData();
      form.append('collection', name);
      form.append('file', file, file.name);
      try {
        const res = await fetch('/api/documents', {
          method: 'POST', body: form, credentials: 'same-origin', headers: csrfHeader() });
        if (!res.ok) {
          docs.status.textContent = `${file.name}: ${(await httpError(res)).message}`;
          continue;
        }
        const doc = await res.json();
        docs.chosen.add(name);  // what you just uploaded is what you ask with next
        docs.status.textContent = `Added ${file.name} to ${name} (${doc.sections} ${doc.sections === 1 ? 'part' : 'parts'}).`;
      } catch (e) {
        docs.status.textContent = `${file.name}: the upload failed (${e.message}).`;
      }
    }
    await loadCollections();
  }
  if (docs.box) {
    docs.pick.addEventListener('click', () => docs.file.click());
    docs.file.addEventListener('change', () => { const f = [...docs.file.files]; docs.file.value = ''; if (f.length) upload(f); });
    const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes('Files');
    document.addEventListener('dragover', (ev) => { if (hasFiles(ev)) { ev.preventDefault(); body.classList.add('dropping'); } });
    document.addEventListener('dragleave', (ev) => { if (!ev.relatedTarget) body.classList.remove('dropping'); });
    document.addEventListener('drop', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      body.classList.remove('dropping');
      if (ev.dataTransfer.files.length) upload([...ev.dataTransfer.files]);
    });
    loadCollections();
  }

  const ident = body.dataset.ident;
  filtersFromAddress();
  if (body.dataset.mode === 'share' && ident) loadStored(`/api/search/${encodeURIComponent(ident)}`, false);
  if (body.dataset.mode === 'thread' && ident) loadStored(`/api/threads/${encodeURIComponent(ident)}`, true);
  if (body.dataset.mode === 'home') {
    const asked = new URLSearchParams(location.search).get('q');
    if (asked && asked.trim()) {  // a search link (/?q=...&recency=...&site=...) runs it
      if (body.dataset.state === 'ready') ask(asked, { askThread: null }); else els.q.value = asked;
    } else els.q.focus();
  }
})();
