// Copy buttons: <button data-copy-target="ID"> copies the value of the field ID.
'use strict';

(() => {
  const fallbackCopy = (field) => {
    field.focus();
    field.select();
    try {
      return document.execCommand('copy');
    } catch (error) {
      return false;
    }
  };

  const copyField = async (field) => {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(field.value);
        return true;
      } catch (error) {
        // Permission refused: fall back to selecting the text.
      }
    }
    return fallbackCopy(field);
  };

  const announce = (button, text) => {
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = text;
    window.clearTimeout(Number(button.dataset.timer || 0));
    button.dataset.timer = String(
      window.setTimeout(() => {
        button.textContent = label;
      }, 1600),
    );
  };

  document.addEventListener('click', async (event) => {
    const button = event.target.closest('[data-copy-target]');
    if (!button) {
      return;
    }
    const field = document.getElementById(button.dataset.copyTarget);
    if (!field) {
      return;
    }
    const copied = await copyField(field);
    announce(button, copied ? 'Copied' : 'Press Ctrl+C');
    if (!copied) {
      field.select();
    }
  });

  // A click in a read-only link field selects all of it, ready to copy by hand.
  document.addEventListener('focusin', (event) => {
    const field = event.target;
    if (field instanceof HTMLInputElement && field.readOnly) {
      field.select();
    }
  });
})();
