package proxy

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
)

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// spool holds a message body: the first threshold bytes in a pooled
// buffer, the rest in a temporary file deleted by Close. Memory therefore
// stays bounded however many large messages are in flight.
type spool struct {
	mem       *bytes.Buffer
	file      *os.File
	fileSize  int64
	threshold int64
	dir       string
}

func newSpool(threshold int64, dir string) *spool {
	b := bufPool.Get().(*bytes.Buffer)
	b.Reset()
	return &spool{mem: b, threshold: threshold, dir: dir}
}

// Write appends p.
func (s *spool) Write(p []byte) (int, error) {
	n := 0
	if room := s.threshold - int64(s.mem.Len()); room > 0 && s.file == nil {
		k := min(int64(len(p)), room)
		s.mem.Write(p[:k])
		n, p = int(k), p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if s.file == nil {
		f, err := os.CreateTemp(s.dir, "mailgate-spool-*")
		if err != nil {
			return n, fmt.Errorf("proxy: spool: %w", err)
		}
		// Unlink at once where the OS allows it: nothing is left behind
		// even if the process dies.
		_ = os.Remove(f.Name())
		s.file = f
	}
	m, err := s.file.Write(p)
	s.fileSize += int64(m)
	if err != nil {
		return n + m, fmt.Errorf("proxy: spool: %w", err)
	}
	return n + m, nil
}

// Size is the number of bytes written.
func (s *spool) Size() int64 { return int64(s.mem.Len()) + s.fileSize }

// Reader returns a new reader over everything written. It may be called
// several times (signing, then relaying).
func (s *spool) Reader() io.Reader {
	r := io.Reader(bytes.NewReader(s.mem.Bytes()))
	if s.file != nil {
		r = io.MultiReader(r, io.NewSectionReader(s.file, 0, s.fileSize))
	}
	return r
}

// Close releases the buffer and removes the file.
func (s *spool) Close() error {
	var err error
	if s.file != nil {
		err = s.file.Close()
		s.file = nil
	}
	if s.mem != nil {
		if s.mem.Cap() <= 4<<20 {
			bufPool.Put(s.mem)
		}
		s.mem = nil
	}
	return err
}
