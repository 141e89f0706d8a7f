#!/bin/bash
# Area 8: outputs onto a full 64 KiB tmpfs (/mnt/bkfull, mounted by hand as root), an
# old file of the same name present: exit 2, one line, the old file intact, no temporaries.
cd /tmp/bk5
export PYTHONPATH=/work/wt-break/src
F=/mnt/bkfull
tried=0; held=0
check() {  # label, output path, command...
  label=$1; out=$2; shift 2
  rm -rf $F/* $F/.[!.]* 2>/dev/null
  echo old > "$out"
  "$@" > /tmp/bk8.out 2> /tmp/bk8.err; rc=$?
  lines=$(wc -l < /tmp/bk8.err)
  left=$(ls -A $F | grep -v "^$(basename $out)$" | tr '\n' ' ')
  old=$(cat "$out" 2>/dev/null | head -c 3)
  tried=$((tried+1))
  if [ $rc = 2 ] && [ $lines = 1 ] && [ "$old" = old ] && [ -z "$left" ]; then held=$((held+1)); v=HELD; else v=FAIL; fi
  echo "$v $label rc=$rc old=$old left=[$left] $(tail -1 /tmp/bk8.err | cut -c1-160)"
}
V="python -m viva_glyph"
check "decode" $F/o.npy $V decode -q m.safetensors codes.npy -o $F/o.npy

check "index search parquet" $F/o.parquet $V index search -q /tmp/bk/big.vgindex /tmp/bk/q2000.npy -k 50 -o $F/o.parquet
check "index build" $F/o.vgindex $V index build -q m.safetensors x.npy -o $F/o.vgindex
check "index search" $F/o.npz $V index search -q /tmp/bk/big.vgindex /tmp/bk/q2000.npy -k 50 -o $F/o.npz
check "ids assign csv" $F/o.csv $V ids assign -q ids.safetensors x.npy -o $F/o.csv
check "eval --plot" $F/o.png $V eval -q m.safetensors x.npy --plot $F/o.png
# a new ID store on the full disk: nothing half-stored, the store readable
rm -rf $F/* ; rm -f /tmp/bk5/st.csv
$V ids assign -q ids.safetensors x.npy -o /tmp/bk5/st.csv --keys keys1.txt --store $F/s.sqlite 2>/tmp/bk8.err; rc=$?
ls -la $F
python -c "
import sqlite3,sys,os; p='$F/s.sqlite'
if os.path.exists(p):
    c=sqlite3.connect(p); print('integrity', c.execute('PRAGMA integrity_check').fetchone()[0], 'rows', c.execute('select count(*) from ids').fetchone()[0] if c.execute(\"select count(*) from sqlite_master where name='ids'\").fetchone()[0] else 'no table')"
tried=$((tried+1))
if [ $rc = 2 ] && [ "$(wc -l < /tmp/bk8.err)" = 1 ] && [ ! -e /tmp/bk5/st.csv ]; then held=$((held+1)); v=HELD; else v=FAIL; fi
echo "$v store on full disk rc=$rc $(cat /tmp/bk8.err | cut -c1-200)"
echo "tried=$tried held=$held"
