/* The rules page: a problem's "line N" link puts the editor's cursor on that line and selects it. */
document.addEventListener("click", function (event) {
  var link = event.target.closest("a[data-line]");
  var editor = document.getElementById("rules-text");
  if (!link || !editor) return;
  event.preventDefault();
  var lines = editor.value.split("\n");
  var line = Math.min(parseInt(link.getAttribute("data-line"), 10), lines.length);
  var start = 0;
  for (var i = 0; i < line - 1; i++) start += lines[i].length + 1;
  editor.focus();
  editor.setSelectionRange(start, start + lines[line - 1].length);
  editor.scrollTop = Math.max(0, (line - 5) * parseFloat(getComputedStyle(editor).lineHeight));
});
