package dkim

import "io"

func ioMulti(r ...io.Reader) io.Reader { return io.MultiReader(r...) }
