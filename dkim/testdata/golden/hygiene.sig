DKIM-Signature: a=ed25519-sha256; bh=otdjtUjU5BD9sDkxIcGFvj2hixktcmuZ/kI9qiSd2hI=;
 c=relaxed/relaxed; d=example.com;
 h=From:From:To:To:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:Reply-To:In-Reply-To:References:MIME-Version:Content-Type:Content-Transfer-Encoding:List-Id:List-Unsubscribe:List-Unsubscribe-Post;
 s=s; t=<T>; v=1; x=<X>;
 b=<B>
