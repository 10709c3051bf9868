// The upload page: drop, choose, paste or fetch by URL; one progress bar per file;
// recent uploads remembered in this browser only (localStorage).
'use strict';

(() => {
  const form = document.getElementById('upload-form');
  if (!form) {
    return;
  }

  const maxBytes = Number(form.dataset.maxBytes);
  const fileInput = document.getElementById('file-input');
  const dropTarget = document.getElementById('drop-target');
  const urlForm = document.getElementById('url-form');
  const urlInput = document.getElementById('url-input');
  const results = document.getElementById('results');
  const recent = document.getElementById('recent');
  const recentList = document.getElementById('recent-list');
  const RECENT_KEY = 'imgyx.recent';
  const RECENT_MAX = 50;
  let fieldCount = 0;

  fileInput.multiple = true;

  // Sizes in the units the server uses: 1024 bytes to a KB.
  const humanSize = (size) => {
    if (size < 1024) {
      return size === 1 ? '1 byte' : `${size} bytes`;
    }
    const units = ['KB', 'MB', 'GB', 'TB'];
    let value = size;
    let unit = -1;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(1).replace(/\.0$/, '')} ${units[unit]}`;
  };

  const absolute = (url) => new URL(url, window.location.href).href;

  const element = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  };

  const copyRow = (value, label) => {
    fieldCount += 1;
    const row = element('div', 'field-row');
    const field = element('input');
    field.type = 'text';
    field.readOnly = true;
    field.value = value;
    field.id = `link-${fieldCount}`;
    field.setAttribute('aria-label', label);
    const button = element('button', 'button secondary', 'Copy');
    button.type = 'button';
    button.dataset.copyTarget = field.id;
    row.append(field, button);
    return row;
  };

  // One entry in the results list, with its progress bar and its outcome.
  const resultItem = (name, size) => {
    const item = element('li', 'result');
    item.dataset.state = 'uploading';
    const head = element('div', 'result-head');
    head.append(element('span', 'result-name', name));
    if (size !== null) {
      head.append(element('span', 'result-size', humanSize(size)));
    }
    const bar = element('progress');
    bar.max = 100;
    bar.setAttribute('aria-label', `Progress of ${name}`);
    const status = element('p', 'result-status', 'Starting…');
    item.append(head, bar, status);
    results.prepend(item);

    return {
      progress(fraction) {
        const percent = Math.round(fraction * 100);
        bar.value = percent;
        item.dataset.progress = String(percent);
        status.textContent = percent < 100 ? `Uploading… ${percent}%` : 'Processing…';
      },
      waiting(text) {
        bar.removeAttribute('value');
        status.textContent = text;
      },
      done(data) {
        item.dataset.state = 'done';
        bar.value = 100;
        status.textContent = data.duplicate ? 'Already here: same link as before.' : 'Uploaded.';
        const links = element('p', 'result-links');
        const preview = element('a', 'preview-link', 'Open the preview page');
        preview.href = data.preview_url;
        links.append(preview);
        item.append(copyRow(absolute(data.url), `Link to ${data.file_name}`), links);
      },
      fail(message) {
        item.dataset.state = 'error';
        bar.remove();
        status.textContent = message;
        status.setAttribute('role', 'alert');
      },
    };
  };

  const parseJson = (text) => {
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  };

  const send = (item, body, contentType) => {
    const request = new XMLHttpRequest();
    request.open('POST', '/api/upload');
    if (contentType) {
      request.setRequestHeader('Content-Type', contentType);
    }
    request.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable && event.total > 0) {
        item.progress(event.loaded / event.total);
      }
    });
    request.addEventListener('load', () => {
      const data = parseJson(request.responseText);
      if ((request.status === 200 || request.status === 201) && data) {
        item.done(data);
        remember(data);
      } else {
        item.fail((data && data.error) || `The upload failed (HTTP ${request.status}).`);
      }
    });
    request.addEventListener('error', () => {
      item.fail('The connection failed. Check your network and try again.');
    });
    request.send(body);
  };

  const uploadFile = (file) => {
    const item = resultItem(file.name || 'file', file.size);
    if (file.size > maxBytes) {
      item.fail(`This file is larger than the ${humanSize(maxBytes)} limit.`);
      return;
    }
    if (file.size === 0) {
      item.fail('This file is empty.');
      return;
    }
    const body = new FormData();
    body.append('file', file, file.name || 'file');
    item.progress(0);
    send(item, body);
  };

  const uploadAll = (files) => {
    Array.from(files || []).forEach(uploadFile);
  };

  const uploadUrl = (url) => {
    const item = resultItem(url, null);
    item.waiting('Fetching…');
    send(item, JSON.stringify({ url }), 'application/json');
  };

  // Pasted screenshots all arrive as "image.png": give them a name worth keeping.
  const pastedName = (file, index) => {
    const stamp = new Date().toISOString().replace(/[:T]/g, '-').slice(0, 19);
    const extension = (file.type.split('/')[1] || 'bin').replace(/\W.*$/, '');
    return `pasted-${stamp}${index ? `-${index}` : ''}.${extension}`;
  };

  const pastedFiles = (data) =>
    Array.from((data && data.items) || [])
      .filter((entry) => entry.kind === 'file')
      .map((entry) => entry.getAsFile())
      .filter(Boolean)
      .map((file, index) => new File([file], pastedName(file, index), { type: file.type }));

  const carriesFiles = (event) =>
    Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types).includes('Files');

  // Chromium opens the picker on Space only; people expect Enter to work too.
  fileInput.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      fileInput.click();
    }
  });

  fileInput.addEventListener('change', () => {
    uploadAll(fileInput.files);
    fileInput.value = '';
  });

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    uploadAll(fileInput.files);
    fileInput.value = '';
  });

  urlForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const url = urlInput.value.trim();
    if (url) {
      uploadUrl(url);
      urlInput.value = '';
    }
  });

  // The whole page takes drops, so a near miss does not open the file in the tab.
  ['dragenter', 'dragover'].forEach((type) => {
    document.addEventListener(type, (event) => {
      if (carriesFiles(event)) {
        event.preventDefault();
        dropTarget.classList.add('dragging');
      }
    });
  });
  document.addEventListener('dragleave', (event) => {
    if (!event.relatedTarget) {
      dropTarget.classList.remove('dragging');
    }
  });
  document.addEventListener('drop', (event) => {
    if (!carriesFiles(event)) {
      return;
    }
    event.preventDefault();
    dropTarget.classList.remove('dragging');
    uploadAll(event.dataTransfer.files);
  });

  document.addEventListener('paste', (event) => {
    const files = pastedFiles(event.clipboardData);
    if (files.length > 0) {
      event.preventDefault();
      uploadAll(files);
    }
  });

  // Recent uploads: kept in localStorage, never sent anywhere.
  const loadRecent = () => {
    try {
      const entries = JSON.parse(window.localStorage.getItem(RECENT_KEY) || '[]');
      return Array.isArray(entries) ? entries : [];
    } catch (error) {
      return [];
    }
  };

  const saveRecent = (entries) => {
    try {
      if (entries.length > 0) {
        window.localStorage.setItem(RECENT_KEY, JSON.stringify(entries));
      } else {
        window.localStorage.removeItem(RECENT_KEY);
      }
    } catch (error) {
      // Storage full or disabled: the list is a convenience, uploads still work.
    }
  };

  function remember(data) {
    const kept = loadRecent().filter((entry) => entry.id !== data.id);
    const previous = loadRecent().find((entry) => entry.id === data.id);
    kept.unshift({
      id: data.id,
      name: data.file_name,
      size: data.size,
      url: absolute(data.url),
      preview: absolute(data.preview_url),
      token: data.delete_token || (previous && previous.token) || null,
      at: new Date().toISOString(),
    });
    saveRecent(kept.slice(0, RECENT_MAX));
    showRecent();
  }

  const deleteFile = (entry, button) => {
    const request = new XMLHttpRequest();
    request.open('DELETE', `/api/files/${encodeURIComponent(entry.id)}`);
    request.setRequestHeader('X-Delete-Token', entry.token);
    request.addEventListener('load', () => {
      if (request.status === 200 || request.status === 404) {
        saveRecent(loadRecent().filter((other) => other.id !== entry.id));
        showRecent();
      } else {
        const data = parseJson(request.responseText);
        button.textContent = 'Failed';
        button.title = (data && data.error) || `HTTP ${request.status}`;
      }
    });
    request.send();
  };

  const recentEntry = (entry) => {
    const item = element('li');
    const name = element('a', 'recent-name', entry.name);
    name.href = entry.preview;
    const meta = element('span', 'recent-meta', humanSize(Number(entry.size) || 0));
    fieldCount += 1;
    const hidden = element('input');
    hidden.type = 'hidden';
    hidden.id = `recent-${fieldCount}`;
    hidden.value = entry.url;
    const copy = element('button', 'button secondary small', 'Copy link');
    copy.type = 'button';
    copy.dataset.copyTarget = hidden.id;
    item.append(name, meta, hidden, copy);
    if (entry.token) {
      const remove = element('button', 'button secondary small danger', 'Delete');
      remove.type = 'button';
      remove.setAttribute('aria-label', `Delete ${entry.name} from the server`);
      remove.addEventListener('click', () => {
        if (window.confirm(`Delete ${entry.name} for everyone?`)) {
          deleteFile(entry, remove);
        }
      });
      item.append(remove);
    }
    return item;
  };

  function showRecent() {
    const entries = loadRecent();
    recentList.replaceChildren(...entries.map(recentEntry));
    recent.hidden = entries.length === 0;
  }

  document.getElementById('clear-recent').addEventListener('click', () => {
    saveRecent([]);
    showRecent();
  });

  showRecent();
})();
