/**
 * The dashboard page's script, as text (inlined into the page; its SHA-256 is the page's only
 * allowed script). Plain browser JavaScript without template literals, so that it can live in a
 * raw string here; `tests/dashboard_test.ts` parses it, and the browser test runs it.
 * @module
 */
export const PAGE_SCRIPT: string = String.raw`
"use strict";
(function () {
  var $ = function (id) {
    return document.getElementById(id);
  };
  var token = new URLSearchParams(location.search).get("token");
  var q = token ? "?token=" + encodeURIComponent(token) : "";
  var S = null;
  var job = null;
  var total = null;
  var steps = [];
  var events = [];
  var lastMessage = 0;
  var MAX_EVENTS = 300;

  // ---------------------------------------------------------------- formatting
  var ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return ESC[c];
    });
  }
  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }
  function fmtSig(v) {
    if (v === null || v === undefined) return "–";
    if (!isNum(v)) return String(v);
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a >= 1e5 || a < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(4)));
  }
  function fmtMs(v) {
    if (!isNum(v)) return "–";
    if (v < 10) return v.toFixed(2) + " ms";
    if (v < 1000) return v.toFixed(0) + " ms";
    if (v < 60000) return (v / 1000).toFixed(1) + " s";
    var m = Math.floor(v / 60000);
    if (m < 60) return m + " min " + Math.round((v % 60000) / 1000) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function fmtBytes(v) {
    if (!isNum(v)) return "–";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
  }
  function fmtRate(v) {
    if (!isNum(v)) return "–";
    return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(1);
  }
  function fmtPct(v) {
    return isNum(v) ? (100 * v).toFixed(1) + "%" : "–";
  }
  function fmtClock(t) {
    var d = new Date(t);
    var p = function (n) {
      return String(n).padStart(2, "0");
    };
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  // ---------------------------------------------------------------- charts
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [170, 220, 50]];
  function ramp(t) {
    var x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
    var i = Math.min(RAMP.length - 2, Math.floor(x));
    var f = x - i;
    var c = RAMP[i].map(function (v, k) {
      return Math.round(v + f * (RAMP[i + 1][k] - v));
    });
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }
  function niceStep(span, target) {
    var raw = span / Math.max(1, target);
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var m = raw / p;
    return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
  }
  function ticks(lo, hi, target, minStep) {
    var step = Math.max(minStep || 0, niceStep(hi - lo, target));
    var out = [];
    for (var v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    var digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
    var big = Math.max.apply(null, out.map(Math.abs).concat([0]));
    var labels = out.map(function (t) {
      if (big >= 1e5 || (big > 0 && big < 1e-3)) {
        return t === 0 ? "0" : t.toExponential(1).replace("e+", "e");
      }
      return t.toFixed(digits);
    });
    return { ticks: out, labels: labels };
  }
  var PAD = { l: 58, r: 10, t: 10, b: 34 };
  var clipSeq = 0;
  // o: { w, h, xLabel, yLabel, lines: [{ series, color, pts, width, opacity }], yLog, yZero,
  //      rules, empty }
  function chart(o) {
    var tf = function (y) {
      return o.yLog ? Math.log10(y) : y;
    };
    var ok = function (y) {
      return isNum(y) && (!o.yLog || y > 0);
    };
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    o.lines.forEach(function (l) {
      l.pts.forEach(function (p) {
        if (!isNum(p[0]) || !ok(p[1])) return;
        x0 = Math.min(x0, p[0]);
        x1 = Math.max(x1, p[0]);
        y0 = Math.min(y0, tf(p[1]));
        y1 = Math.max(y1, tf(p[1]));
      });
    });
    var first = o.lines.length
      ? o.lines[0].pts.filter(function (p) {
        return ok(p[1]);
      }).length
      : 0;
    if (!(x0 <= x1) || !(y0 <= y1)) {
      return '<div class="empty" data-points="0">' + esc(o.empty) + "</div>";
    }
    if (x0 === x1) {
      x0 -= 0.5;
      x1 += 0.5;
    }
    if (o.yLog) {
      y0 = Math.floor(y0 + 1e-9);
      y1 = Math.ceil(y1 - 1e-9);
      if (y0 === y1) y0 -= 1;
    } else if (y0 === y1) {
      var d0 = Math.abs(y0) * 0.1 || 1;
      y0 -= d0;
      y1 += d0;
    } else {
      var d = (y1 - y0) * 0.05;
      y0 = o.yZero && y0 >= 0 ? 0 : y0 >= 0 && y0 - d < 0 ? 0 : y0 - d;
      y1 += d;
    }
    var W = o.w, H = o.h, pw = W - PAD.l - PAD.r, ph = H - PAD.t - PAD.b;
    var sx = function (x) {
      return PAD.l + ((x - x0) / (x1 - x0)) * pw;
    };
    var sy = function (y) {
      return PAD.t + (1 - (y - y0) / (y1 - y0)) * ph;
    };
    var r1 = function (v) {
      return Math.round(v * 10) / 10;
    };
    var s = [
      '<svg class="chart" viewBox="0 0 ' + W + " " + H + '" role="img" data-points="' +
      first + '"><title>' + esc(o.yLabel) + "</title>",
    ];
    var yt = [];
    if (o.yLog) {
      var every = Math.max(1, Math.ceil((y1 - y0) / 6));
      for (var e = y0; e <= y1; e += every) yt.push([e, e === 0 ? "1" : "1e" + e]);
    } else {
      var t = ticks(y0, y1, 4);
      t.ticks.forEach(function (v, i) {
        yt.push([v, t.labels[i]]);
      });
    }
    yt.forEach(function (p) {
      var y = r1(sy(p[0]));
      s.push(
        '<line class="grid" x1="' + PAD.l + '" x2="' + (W - PAD.r) + '" y1="' + y + '" y2="' + y +
          '"/><text class="tick" x="' + (PAD.l - 5) + '" y="' + (y + 3.5) + '" text-anchor="end">' +
          esc(p[1]) + "</text>",
      );
    });
    var xt = ticks(x0, x1, Math.max(2, Math.floor(pw / 80)), 1);
    xt.ticks.forEach(function (v, i) {
      var x = r1(sx(v));
      s.push(
        '<line class="grid" x1="' + x + '" x2="' + x + '" y1="' + PAD.t + '" y2="' + (PAD.t + ph) +
          '"/><text class="tick" x="' + x + '" y="' + (PAD.t + ph + 13) +
          '" text-anchor="middle">' +
          esc(xt.labels[i]) + "</text>",
      );
    });
    s.push(
      '<rect class="frame" x="' + PAD.l + '" y="' + PAD.t + '" width="' + pw + '" height="' + ph +
        '"/><text class="axis" x="' + (PAD.l + pw / 2) + '" y="' + (H - 4) +
        '" text-anchor="middle">' + esc(o.xLabel) +
        '</text><text class="axis" transform="translate(11 ' +
        (PAD.t + ph / 2) + ') rotate(-90)" text-anchor="middle">' + esc(o.yLabel) + "</text>",
    );
    (o.rules || []).forEach(function (r, i) {
      if (!(r.at >= x0 && r.at <= x1)) return;
      var x = r1(sx(r.at));
      s.push(
        '<line class="rule" x1="' + x + '" x2="' + x + '" y1="' + PAD.t + '" y2="' + (PAD.t + ph) +
          '"/><text class="rule-label" x="' + (x + 3) + '" y="' + (PAD.t + 11 + 12 * i) + '">' +
          esc(r.label) + "</text>",
      );
    });
    var clip = "c" + (++clipSeq);
    s.push(
      '<clipPath id="' + clip + '"><rect x="' + PAD.l + '" y="' + PAD.t + '" width="' + pw +
        '" height="' + ph + '"/></clipPath><g clip-path="url(#' + clip + ')">',
    );
    o.lines.forEach(function (l) {
      var style = "stroke:" + l.color + ";stroke-width:" + (l.width || 1.5) + ";" +
        (l.opacity !== undefined ? "stroke-opacity:" + l.opacity + ";" : "");
      var seg = [];
      var stride = Math.ceil(l.pts.length / 1500);
      var flush = function () {
        if (seg.length === 1) {
          var xy = seg[0].split(",");
          s.push(
            '<circle cx="' + xy[0] + '" cy="' + xy[1] + '" r="2.4" style="fill:' + l.color + '"/>',
          );
        } else if (seg.length > 1) {
          s.push(
            '<polyline class="series" data-series="' + esc(l.series) + '" style="' + style +
              '" points="' + seg.join(" ") + '"/>',
          );
        }
        seg = [];
      };
      l.pts.forEach(function (p, i) {
        if (!isNum(p[0]) || !ok(p[1])) {
          flush();
          return;
        }
        if (i % stride !== 0 && i !== l.pts.length - 1) return;
        seg.push(r1(sx(p[0])) + "," + r1(sy(tf(p[1]))));
      });
      flush();
    });
    s.push("</g></svg>");
    return s.join("");
  }
  function legend(items) {
    return '<div class="legend">' + items.map(function (i) {
      return '<span><i class="swatch" style="background:' + i.color + '"></i>' + esc(i.label) +
        "</span>";
    }).join("") + "</div>";
  }

  // ---------------------------------------------------------------- the model
  function addStep(rec) {
    while (steps.length && steps[steps.length - 1].step >= rec.step) steps.pop();
    steps.push(rec);
  }
  function training() {
    return S && S.training && S.training.job === job ? S.training : null;
  }
  function take(r) {
    if (r.type === "app" && r.kind && r.kind.indexOf("train.") === 0 && r.data && r.data.job) {
      var d = r.data;
      var starts = r.kind === "train.run" || r.kind === "train.step";
      if (d.job !== job && (starts || job === null)) {
        job = d.job;
        steps = [];
        total = null;
        if (r.kind !== "train.run") refetch();
      }
      if (r.kind === "train.step") {
        // Anyone on the system may publish: a record without a step number is not one.
        if (!d.record || !isNum(d.record.step)) return;
        total = d.total_steps;
        addStep(d.record);
        dirty();
        return;
      }
      if (r.kind === "train.run") {
        total = d.total_steps;
        (d.steps || []).forEach(addStep);
      }
      if (r.kind === "train.rollback" && d.job === job) {
        while (steps.length && steps[steps.length - 1].step >= d.next_step) steps.pop();
      }
    }
    events.push(r);
    if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
    dirty();
  }
  function refetch() {
    fetch("api/state" + q).then(function (res) {
      return res.json();
    }).then(function (st) {
      if (st.training && st.training.job === job) {
        var mine = steps;
        steps = st.training.steps.slice();
        mine.forEach(addStep);
      }
    }).catch(function () {});
  }

  // ---------------------------------------------------------------- rendering
  var pending = false;
  function dirty() {
    if (pending) return;
    pending = true;
    setTimeout(function () {
      pending = false;
      render();
    }, 120);
  }
  function text(id, v) {
    var e = $(id);
    if (e && e.textContent !== v) e.textContent = v;
  }
  function html(id, v) {
    var e = $(id);
    if (e && e.innerHTML !== v) e.innerHTML = v;
  }
  function mean(xs) {
    return xs.length
      ? xs.reduce(function (a, b) {
        return a + b;
      }, 0) / xs.length
      : null;
  }

  function renderTraining() {
    var tr = training();
    if (!job) return;
    var method = tr && tr.method ? tr.method : "";
    text(
      "job",
      (method ? method + " · " : "") + "job " + job +
        (tr && tr.workers ? " · " + tr.workers + " workers" : "") +
        (tr && tr.devices && tr.devices.length ? " · " + tr.devices[0] : ""),
    );
    var tot = total !== null ? total : tr ? tr.totalSteps : null;
    var done = steps.length ? steps[steps.length - 1].step + 1 : 0;
    text("step", done + " / " + (tot === null || tot === undefined ? "–" : tot));
    $("progress").style.width = tot ? Math.min(100, (100 * done) / tot).toFixed(1) + "%" : "0";
    var last = steps[steps.length - 1];
    var recent = steps.slice(-20).filter(function (s) {
      return !s.skipped;
    });
    var ms = mean(recent.map(function (s) {
      return s.ms;
    }));
    var tok = recent.reduce(function (a, s) {
      return a + (s.tokens || 0);
    }, 0);
    var msAll = recent.reduce(function (a, s) {
      return a + s.ms;
    }, 0);
    text("loss", last ? fmtSig(last.loss) : "–");
    text("lr", last && isNum(last.lr) ? String(Number(last.lr.toPrecision(3))) : "–");
    text("tps", tok > 0 && msAll > 0 ? fmtRate((tok * 1000) / msAll) : "–");
    text("msstep", fmtMs(ms));
    var finished = tr && tr.finished;
    text(
      "eta",
      finished
        ? "done"
        : tot && ms !== null
        ? (done >= tot ? "finishing" : fmtMs((tot - done) * ms))
        : "–",
    );
    text(
      "bytes",
      recent.length
        ? fmtBytes(mean(recent.map(function (s) {
          return s.bytes_sent;
        }))) +
          " / " + fmtBytes(mean(recent.map(function (s) {
            return s.bytes_received;
          })))
        : "–",
    );
    text("gen", tr ? tr.generation + " · " + tr.rollbacks.length : "–");
    text("refused", tr ? tr.refused + " · " + tr.resyncs : "–");

    var rules = tr
      ? tr.rollbacks.map(function (r) {
        return { at: r.next_step, label: "rollback → g" + r.generation };
      })
      : [];
    var raw = steps.map(function (s) {
      return [s.step, s.loss === null ? NaN : s.loss];
    });
    var sm = [], ema = 0, w = 0;
    steps.forEach(function (s) {
      if (s.loss === null || !isFinite(s.loss)) {
        sm.push([s.step, NaN]);
        return;
      }
      ema = 0.9 * ema + 0.1 * s.loss;
      w = 0.9 * w + 0.1;
      sm.push([s.step, ema / w]);
    });
    html(
      "loss-chart",
      chart({
        w: 780,
        h: 250,
        xLabel: "step",
        yLabel: "loss",
        rules: rules,
        empty: "no steps yet",
        lines: [
          { series: "loss", color: "#d1495b", pts: raw, width: 1.2, opacity: 0.45 },
          { series: "loss-smoothed", color: "#d1495b", pts: sm, width: 2 },
        ],
      }) + (steps.length
        ? legend([{ label: "loss (mean over workers)", color: "rgba(209,73,91,.45)" }, {
          label: "smoothed",
          color: "#d1495b",
        }])
        : ""),
    );
    html(
      "lr-chart",
      chart({
        w: 385,
        h: 250,
        xLabel: "step",
        yLabel: "learning rate",
        yZero: true,
        empty: "no steps yet",
        lines: [{
          series: "lr",
          color: "#1f5fa8",
          pts: steps.map(function (s) {
            return [s.step, s.lr];
          }),
        }],
      }),
    );
    html(
      "tps-chart",
      chart({
        w: 385,
        h: 230,
        xLabel: "step",
        yLabel: "tokens/s",
        yZero: true,
        empty: "no token counts yet",
        lines: [{
          series: "tokens",
          color: "#5c946e",
          pts: steps.map(function (s) {
            return [s.step, s.tokens && s.ms > 0 ? (s.tokens * 1000) / s.ms : NaN];
          }),
        }],
      }),
    );
    var c = mean(recent.map(function (s) {
      return s.compute_ms;
    }));
    var m = mean(recent.map(function (s) {
      return s.comm_ms;
    }));
    var u = mean(recent.map(function (s) {
      return s.update_ms;
    }));
    if (c === null) {
      html("split", '<div class="empty">no steps yet</div>');
    } else {
      var sum = c + m + u || 1;
      var parts = [["compute", c, "#d1495b"], ["communication", m, "#1f5fa8"], [
        "update",
        u,
        "#5c946e",
      ]];
      html(
        "split",
        '<div class="stack">' + parts.map(function (p) {
          return '<i style="width:' + ((100 * p[1]) / sum).toFixed(1) + "%;background:" + p[2] +
            '" title="' + p[0] + '"></i>';
        }).join("") + "</div>" + legend(parts.map(function (p) {
          return {
            label: p[0] + " " + fmtMs(p[1]) + " (" + ((100 * p[1]) / sum).toFixed(0) + "%)",
            color: p[2],
          };
        })),
      );
    }
    renderEval(tr);
    renderSpectra(tr);
    var earlier = S && S.earlier ? S.earlier : [];
    text(
      "earlier",
      earlier.length
        ? "Earlier runs: " + earlier.map(function (r) {
          return (r.method || r.job) + " (" + r.steps + " steps, final loss " +
            fmtSig(r.finalLoss) + ")";
        }).join(", ")
        : "",
    );
  }

  function renderEval(tr) {
    var ev = tr ? tr.evals : null;
    if (!ev || (!ev.before && !ev.after)) {
      html("eval", '<div class="empty">no evaluation yet</div>');
      return;
    }
    var tasks = {};
    [ev.before, ev.after].forEach(function (e) {
      if (e) {
        Object.keys(e.tasks).forEach(function (t) {
          tasks[t] = 1;
        });
      }
    });
    var names = Object.keys(tasks).sort();
    var cell = function (e, t) {
      return e ? fmtPct(t === null ? e.overall : e.tasks[t]) : "–";
    };
    var rows = names.map(function (t) {
      return "<tr><td>" + esc(t) + "</td><td>" + cell(ev.before, t) + "</td><td>" +
        cell(ev.after, t) + "</td></tr>";
    });
    rows.push(
      "<tr><td><b>overall</b></td><td><b>" + cell(ev.before, null) + "</b></td><td><b>" +
        cell(ev.after, null) + "</b></td></tr>",
    );
    html(
      "eval",
      '<table id="eval-table"><tr><th>task</th><th>before</th><th>after</th></tr>' + rows.join("") +
        "</table>",
    );
  }

  function rankBound(tr) {
    if (!tr) return null;
    var r = Number(tr.config.rank), k = Number(tr.config.workers || tr.workers);
    if (!(r > 0)) return null;
    if (tr.method === "hd-pissa" && k > 0) return { at: 2 * k * r, label: "2Kr = " + 2 * k * r };
    if (tr.method === "pissa") return { at: 2 * r, label: "2r = " + 2 * r };
    if (tr.method === "lora") return { at: r, label: "r = " + r };
    return null;
  }

  function renderSpectra(tr) {
    var f = tr ? tr.finished : null;
    var names = f ? Object.keys(f.spectra) : [];
    if (!names.length) {
      html("spectra", '<div class="empty">at the end of the run</div>');
      return;
    }
    var pick = [];
    var n = Math.min(8, names.length);
    for (var i = 0; i < n; i++) pick.push(names[Math.floor((i * names.length) / n)]);
    var lines = pick.map(function (name, i) {
      var sv = f.spectra[name];
      var s1 = sv[0] || 1;
      return {
        series: name,
        color: ramp(n === 1 ? 0 : i / (n - 1)),
        pts: sv.map(function (v, j) {
          return [j + 1, v / s1];
        }),
      };
    });
    var rb = rankBound(tr);
    html(
      "spectra",
      chart({
        w: 1160,
        h: 240,
        xLabel: "index i",
        yLabel: "σᵢ / σ₁",
        yLog: true,
        rules: rb ? [rb] : [],
        empty: "no spectra",
        lines: lines,
      }) + legend(lines.map(function (l) {
        var er = f.effective_rank[l.series];
        return {
          label: l.series.replace(/^model\.layers\./, "L").replace(/\.(self_attn|mlp)\./, ".") +
            (er && er["rank_1e-2"] !== undefined ? " (rank " + er["rank_1e-2"] + ")" : ""),
          color: l.color,
        };
      })),
    );
  }

  function renderCluster() {
    if (!S) return;
    var cl = S.cluster;
    text("sys", "system " + cl.system);
    var up = cl.actors.filter(function (a) {
      return a.state === "up";
    }).length;
    text("cluster-sum", cl.nodes.length + " nodes · " + up + " actors up");
    var nodes = cl.nodes.map(function (n) {
      var res = Object.keys(n.resources).map(function (k) {
        return k + " " + (n.used[k] || 0) + "/" + n.resources[k];
      }).join(", ") || "–";
      var late = n.heartbeatAgeMs > 2 * n.heartbeatMs;
      return '<tr data-node="' + esc(n.id) + '"><td class="mono">' + esc(n.id) +
        (n.self ? " (this)" : "") +
        "</td><td>" + esc(n.host) + "</td><td>" + n.pid + "</td><td>" + esc(res) + "</td><td" +
        (late ? ' style="color:var(--bad)"' : "") + ">" + (n.heartbeatAgeMs / 1000).toFixed(1) +
        " s</td><td>" + n.actors + "</td></tr>";
    });
    html(
      "nodes",
      "<tr><th>node</th><th>host</th><th>pid</th><th>resources used</th><th>heartbeat</th>" +
        "<th>actors</th></tr>" + nodes.join(""),
    );
    var order = { up: 0, restarting: 1, down: 2, gone: 3 };
    var actors = cl.actors.slice().sort(function (a, b) {
      return order[a.state] - order[b.state] || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    }).slice(0, 200).map(function (a) {
      var mailbox = a.queued === null ? "–" : a.queued + (a.busy ? " +1" : "");
      return '<tr data-actor="' + esc(a.id) + '" data-state="' + a.state + '" data-inc="' + a.inc +
        '"' +
        (a.state === "gone" ? ' class="gone"' : "") + '><td class="mono">' + esc(a.name || a.id) +
        "</td><td>" + esc(a.type) + '</td><td class="mono">' + esc(a.node) +
        '</td><td><span class="badge ' +
        a.state + '"' +
        (a.reason ? ' title="' + esc(a.reason + (a.detail ? ": " + a.detail : "")) + '"' : "") +
        ">" + a.state + "</span></td><td>" + a.inc + "</td><td>" + mailbox + "</td><td>" +
        (a.callsPerSec === null ? "–" : fmtRate(a.callsPerSec)) + "</td></tr>";
    });
    html(
      "actors",
      "<tr><th>actor</th><th>type</th><th>node</th><th>state</th><th>restarts</th>" +
        '<th title="queued (+1: running)">mailbox</th><th>calls/s</th></tr>' + actors.join(""),
    );
  }

  var REASONS = {
    node: "its node went away",
    killed: "killed",
    stopped: "stopped",
    owner: "its owner went away",
    init: "its constructor failed",
    budget: "out of restarts",
    shutdown: "shut down",
  };
  function why(r) {
    return REASONS[r] || r;
  }
  function describe(r) {
    var a = r.actor;
    var who = a ? (a.name || a.id) : "";
    var d = r.data || {};
    switch (r.type) {
      case "node_up":
        return ["info", "node " + r.node + " joined"];
      case "node_down":
        return ["bad", "node " + r.node + " left"];
      case "node_reconnected":
        return ["warn", "node " + r.node + " reconnected"];
      case "node_replaced":
        return ["good", "node " + r.node + " replaced by " + r.replacement];
      case "actor_up":
        return a.inc > 0
          ? ["good", who + " (" + a.type + ") restarted on " + a.node + ", incarnation " + a.inc]
          : ["info", who + " (" + a.type + ") up on " + a.node];
      case "actor_down":
        return r.final ? ["info", who + " stopped (" + r.reason + ")"] : [
          "bad",
          who + " (" + a.type + ") died on " + a.node + ": " + why(r.reason) +
          (r.detail ? " (" + r.detail + ")" : ""),
        ];
      case "actor_restarting":
        return ["warn", who + " restarting"];
      case "actor_gone":
        return [
          r.reason === "stopped" || r.reason === "shutdown" ? "info" : "bad",
          who + " gone (" + why(r.reason) + ")",
        ];
      case "supervisor_failed":
        return ["bad", "supervisor " + r.supervisor + " gave up: " + (r.detail || "")];
    }
    switch (r.kind) {
      case "train.run":
        return [
          "info",
          "run " + d.job + ": " + d.method + ", " + d.total_steps + " steps on " +
          d.workers + " workers" + (d.resumed ? " (resumed at step " + d.next_step + ")" : ""),
        ];
      case "train.rollback":
        return [
          "warn",
          "rolled back: generation " + d.generation + ", continuing at step " +
          d.next_step + " (" + d.cause + ")",
        ];
      case "train.resync":
        return [
          "warn",
          "step " + d.step + ": workers " + (d.workers || []).join(", ") +
          " re-synchronised from worker 0",
        ];
      case "train.refused":
        return [
          "warn",
          "step " + d.step + ": " + d.count + " messages refused on the job's subjects",
        ];
      case "train.eval":
        return ["good", "evaluation " + d.phase + ": " + fmtPct(d.score && d.score.overall)];
      case "train.finished":
        return ["good", "run " + d.job + " finished"];
      case "train.log":
        return ["", String(d.line)];
    }
    return [
      "",
      (r.kind || r.type) + (r.data !== undefined ? " " + JSON.stringify(r.data).slice(0, 200) : ""),
    ];
  }

  function renderEvents() {
    // A stop on purpose is one line (its "gone"), a death its own.
    var shown = events.filter(function (r) {
      return !(r.type === "actor_down" && r.final);
    });
    var items = shown.slice(-200).reverse().map(function (r) {
      var dsc = describe(r);
      return '<li class="' + dsc[0] + '" data-type="' + esc(r.type) + '"' +
        (r.kind ? ' data-kind="' + esc(r.kind) + '"' : "") +
        (r.actor ? ' data-actor="' + esc(r.actor.id) + '" data-inc="' + r.actor.inc + '"' : "") +
        "><time>" + fmtClock(r.time) + "</time><span>" + esc(dsc[1]) + "</span></li>";
    });
    html("events", items.join("") || "<li><time></time><span>nothing yet</span></li>");
  }

  function render() {
    renderTraining();
    renderCluster();
    renderEvents();
  }

  // ---------------------------------------------------------------- the stream
  function conn(state, label) {
    var e = $("conn");
    e.dataset.state = state;
    e.textContent = label;
  }
  var es = new EventSource("api/events" + q);
  es.addEventListener("hello", function (m) {
    lastMessage = Date.now();
    S = JSON.parse(m.data);
    job = S.training ? S.training.job : null;
    total = S.training ? S.training.totalSteps : null;
    steps = S.training ? S.training.steps.slice() : [];
    events = S.events.slice();
    conn("live", "live");
    dirty();
  });
  es.addEventListener("state", function (m) {
    lastMessage = Date.now();
    S = JSON.parse(m.data);
    if (S.training && S.training.job !== job) {
      job = S.training.job;
      steps = [];
      total = S.training.totalSteps;
      refetch();
    }
    events = S.events.slice();
    conn(S.connected ? "live" : "lost", S.connected ? "live" : "system connection lost");
    dirty();
  });
  es.addEventListener("event", function (m) {
    lastMessage = Date.now();
    take(JSON.parse(m.data));
  });
  es.onerror = function () {
    conn("lost", "reconnecting…");
  };
  setInterval(function () {
    text("clock", fmtClock(Date.now()));
    if (lastMessage && Date.now() - lastMessage > 5000) {
      conn(
        "lost",
        "no news for " +
          Math.round((Date.now() - lastMessage) / 1000) + " s",
      );
    }
  }, 1000);
})();
`;
